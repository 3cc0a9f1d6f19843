<?php

namespace Stellwerk;

/**
 * Server side of the JSUpdater bridge (clients/js): pushes data to callbacks that Stud.IP
 * pages registered with `STUDIP.JSUpdater.register(index, callback)`, instead of waiting for
 * their next poll of `dispatch.php/jsupdater/get`.
 *
 * ```php
 * \Stellwerk\JsUpdater::setClient($stellwerk);              // once, at bootstrap
 * \Stellwerk\JsUpdater::push([$user_id], 'messages', ['unread' => 3]);
 * ```
 *
 * Each push is `{"index": "<index>", "data": <data>}` on `user:<id>` of every user, in one
 * publishMany() request; the bridge in the page hands `data` to the callbacks registered under
 * `index`, as `processUpdate` hands them polled data. A fire-and-forget client
 * (`$stellwerk->withFireAndForget()`) keeps the request path from waiting.
 */
final class JsUpdater
{
    /** @var Client|null */
    private static $client;

    /** The client push() uses when it is given none. */
    public static function setClient(?Client $client): void
    {
        self::$client = $client;
    }

    /** The configured client, or null. */
    public static function client(): ?Client
    {
        return self::$client;
    }

    /**
     * Pushes `$data` under `$index` to each of the users (duplicates sent once).
     *
     * @param iterable<string> $userIds Stud.IP user ids; none → no request
     * @param string $index the JSUpdater index, e.g. `messages` or `Blubber.getNewPosts`
     * @param mixed $data any JSON-encodable value, as the poll would have returned it
     * @param Client|null $client the client to use; default: the one given to setClient()
     * @return list<array{channel: string, epoch: string, offset: int}>|null one result per user
     *         (null in fire-and-forget mode)
     * @throws Exception\StellwerkException
     */
    public static function push(iterable $userIds, string $index, $data, ?Client $client = null): ?array
    {
        $channels = [];
        foreach ($userIds as $userId) {
            if (!is_string($userId) || $userId === '') {
                throw new \InvalidArgumentException('user ids must be non-empty strings');
            }
            $channels['user:' . $userId] = true;
        }
        return self::pushToChannels(array_keys($channels), $index, $data, $client);
    }

    /**
     * The same push on any channels, e.g. a course channel the bridge listens on.
     *
     * @param list<string> $channels none → no request
     * @param mixed $data
     * @return list<array{channel: string, epoch: string, offset: int}>|null
     * @throws Exception\StellwerkException
     */
    public static function pushToChannels(array $channels, string $index, $data, ?Client $client = null): ?array
    {
        if ($index === '') {
            throw new \InvalidArgumentException('JSUpdater index is empty');
        }
        $client = $client ?? self::$client;
        if ($client === null) {
            throw new \LogicException(
                'Stellwerk\JsUpdater has no client: call JsUpdater::setClient($client) first, or pass one'
            );
        }
        if ($channels === []) {
            return [];
        }
        return $client->publishMany(array_values($channels), ['index' => $index, 'data' => $data]);
    }
}
