<?php

namespace Stellwerk\Tests;

use PHPUnit\Framework\TestCase;
use Stellwerk\Client;
use Stellwerk\TokenFactory;
use Stellwerk\Tests\Support\Broker;
use Stellwerk\Tests\Support\Ids;
use Stellwerk\Tests\Support\SseStream;

/** Every call of the client against the real broker (the shared default one). */
final class ClientTest extends TestCase
{
    /** @var Broker */
    private $broker;
    /** @var Client */
    private $client;
    /** @var TokenFactory */
    private $tokens;

    protected function setUp(): void
    {
        $this->broker = Broker::shared();
        $this->client = new Client($this->broker->url, $this->broker->apiKey);
        $this->tokens = new TokenFactory((string) $this->broker->jwtSecret);
    }

    /** A course member's SSE stream on `$channel`, live (its `subscribed` event read). */
    private function subscriber(string $user, string $courseId, string $channel, array $extra = []): SseStream
    {
        $token = $this->tokens->forUser($user, 'autor', [$courseId => 'autor'], 600, $extra);
        $stream = SseStream::open($this->broker->url, [$channel], $token);
        if ($stream->status() !== 200) {
            $this->fail("SSE on $channel: {$stream->status()} " . json_encode($stream->errorBody()));
        }
        $stream->next('subscribed');
        return $stream;
    }

    public function testTheOneCallExampleOfTheDocsPublishesToTheCourse(): void
    {
        $readme = (string) file_get_contents(__DIR__ . '/../README.md');
        $docs = (string) file_get_contents(__DIR__ . '/../../../docs/clients.md');
        $example = self::example($readme, 'one-call-publish');
        $this->assertSame($example, self::example($docs, 'one-call-publish'), 'README and docs show the same example');

        $course_id = Ids::hex();
        $news_id = Ids::hex();
        $stream = $this->subscriber(Ids::hex(), $course_id, 'course:' . $course_id . ':news');
        putenv('STELLWERK_URL=' . $this->broker->url);
        putenv('STELLWERK_API_KEY=' . $this->broker->apiKey);
        try {
            eval($example);
        } finally {
            putenv('STELLWERK_URL');
            putenv('STELLWERK_API_KEY');
        }
        $push = $stream->next('message')['data'];
        $this->assertSame('course:' . $course_id . ':news', $push['channel']);
        $this->assertSame(['type' => 'news.created', 'id' => $news_id], $push['data']);
    }

    /** The PHP block right after `<!-- tested: $name -->`, without its fences. */
    private static function example(string $markdown, string $name): string
    {
        $marker = "<!-- tested: $name -->";
        $at = strpos($markdown, $marker);
        self::assertNotFalse($at, "marker $marker");
        if (!preg_match('/```php\n(.*?)```/s', substr($markdown, $at), $m)) {
            self::fail("no ```php block after $marker");
        }
        return $m[1];
    }

    public function testPublishReturnsThePositionAndTheSubscriberGetsTheData(): void
    {
        $course = Ids::hex();
        $channel = "course:$course:wiki";
        $stream = $this->subscriber(Ids::hex(), $course, $channel);
        $data = ['type' => 'wiki.page.updated', 'page' => 'Start', 'n' => 1.0, 'umlaut' => 'Prüfung', 'path' => 'a/b'];

        $first = $this->client->publish($channel, $data);
        $second = $this->client->publish($channel, 'plain string');

        $this->assertSame($channel, $first['channel']);
        $this->assertIsString($first['epoch']);
        $this->assertIsInt($first['offset']);
        $this->assertSame($first['epoch'], $second['epoch']);
        $this->assertSame($first['offset'] + 1, $second['offset']);
        $push = $stream->next('message')['data'];
        $this->assertSame($first['offset'], $push['offset']);
        $this->assertSame($data, $push['data']);
        $this->assertSame('plain string', $stream->next('message')['data']['data']);
    }

    public function testPublishManyReachesEveryChannelInOrder(): void
    {
        $course = Ids::hex();
        $user = Ids::hex();
        $channels = ["course:$course:news", "user:$user", 'public:php-many-' . Ids::hex()];
        $stream = $this->subscriber($user, $course, $channels[0]);

        $results = $this->client->publishMany($channels, ['type' => 'announcement']);

        $this->assertSame($channels, array_column($results, 'channel'));
        $this->assertSame(['type' => 'announcement'], $stream->next('message')['data']['data']);
        foreach ($channels as $channel) {
            $history = $this->client->history($channel);
            $this->assertSame([['offset' => $history['messages'][0]['offset'], 'data' => ['type' => 'announcement']]], $history['messages']);
        }
    }

    public function testPresenceListsEachUserOnceWithThePluginsInfo(): void
    {
        $course = Ids::hex();
        // A `/` and an `@` in the topic: the path segment must be percent-encoded.
        $channel = "course:$course:room/1@php";
        [$ada, $bob] = [str_repeat('a', 32), Ids::hex()];
        $this->assertSame([], $this->client->presence($channel));

        $streams = [
            $this->subscriber($ada, $course, $channel, ['name' => 'Ada']),
            $this->subscriber($ada, $course, $channel, ['name' => 'Ada']),
            $this->subscriber($bob, $course, $channel),
        ];

        $expected = [['user' => $ada, 'info' => ['name' => 'Ada']], ['user' => $bob, 'info' => []]];
        usort($expected, static function (array $a, array $b): int {
            return strcmp($a['user'], $b['user']);
        });
        $this->assertSame($expected, $this->client->presence($channel));
        $this->assertCount(3, $streams);
    }

    public function testHistoryReturnsTheLatestOldestFirstWithLimitAndSince(): void
    {
        $channel = 'course:' . Ids::hex() . ':history';
        $offsets = [];
        for ($n = 1; $n <= 4; $n++) {
            $offsets[] = $this->client->publish($channel, ['n' => $n])['offset'];
        }

        $all = $this->client->history($channel);
        $this->assertSame($channel, $all['channel']);
        $this->assertSame([1, 2, 3, 4], array_column(array_column($all['messages'], 'data'), 'n'));
        $this->assertSame($offsets, array_column($all['messages'], 'offset'));

        $latest = $this->client->history($channel, 2);
        $this->assertSame([3, 4], array_column(array_column($latest['messages'], 'data'), 'n'));
        $this->assertSame($all['epoch'], $latest['epoch']);

        $since = $this->client->history($channel, null, $offsets[2]);
        $this->assertSame([4], array_column(array_column($since['messages'], 'data'), 'n'));
        $this->assertSame([], $this->client->history($channel, 0)['messages']);
    }

    public function testChannelsListsActiveChannelsByPrefix(): void
    {
        $course = Ids::hex();
        $prefix = "course:$course:";
        $this->assertSame([], $this->client->channels($prefix));

        $chat = $this->subscriber(Ids::hex(), $course, $prefix . 'chat');
        $chat2 = $this->subscriber(Ids::hex(), $course, $prefix . 'chat');
        $wiki = $this->subscriber(Ids::hex(), $course, $prefix . 'wiki');

        $this->assertSame(
            [['channel' => $prefix . 'chat', 'subscribers' => 2], ['channel' => $prefix . 'wiki', 'subscribers' => 1]],
            $this->client->channels($prefix)
        );
        $everything = array_column($this->client->channels(), 'channel');
        $this->assertContains($prefix . 'wiki', $everything);
        $this->assertNotNull($chat);
        $this->assertNotNull($chat2);
        $this->assertNotNull($wiki);
    }

    public function testDisconnectUserEndsTheirStreamsAndCountsThem(): void
    {
        $course = Ids::hex();
        $user = Ids::hex();
        $stream = $this->subscriber($user, $course, "course:$course:chat");
        $other = $this->subscriber(Ids::hex(), $course, "course:$course:chat");

        $this->assertSame(1, $this->client->disconnectUser($user));

        $disconnect = $stream->next('disconnect')['data'];
        $this->assertSame(4003, $disconnect['code']);
        $this->assertSame(0, $this->client->disconnectUser($user), 'nobody left to cut off');
        $this->assertSame(0, $this->client->disconnectUser('nobody@example'), 'unknown users are no error');
        $this->assertSame(
            [['channel' => "course:$course:chat", 'subscribers' => 1]],
            $this->client->channels("course:$course:"),
            'the other user stays'
        );
        $this->assertNotNull($other);
    }

    public function testInfoNamesVersionLoadAndPlugins(): void
    {
        $info = $this->client->info();

        $this->assertMatchesRegularExpression('/^\d+\.\d+\.\d+/', $info['version']);
        foreach (['uptime_seconds', 'connections', 'channels', 'subscriptions'] as $field) {
            $this->assertIsInt($info[$field], $field);
        }
        $names = array_column($info['plugins'], 'name');
        sort($names);
        $this->assertSame(['blubber', 'course', 'public', 'user'], $names);
    }

    public function testBaseUrlMayEndInASlashAndKeepsAliveAcrossCalls(): void
    {
        $client = new Client($this->broker->url . '/', $this->broker->apiKey);
        for ($i = 0; $i < 3; $i++) {
            $this->assertIsArray($client->info());
        }
    }

    public function testProgrammingErrorsAreInvalidArgumentsNotStellwerkExceptions(): void
    {
        $cases = [
            function (): void {
                $this->client->publish('public:x', ['bad' => "\xff"]);
            },
            function (): void {
                $this->client->publish('public:x', NAN);
            },
            function (): void {
                $this->client->publishMany([], 1);
            },
            function (): void {
                $this->client->history('public:x', -1);
            },
            function (): void {
                new Client('127.0.0.1:8080', 'key');
            },
            function (): void {
                new Client('http://127.0.0.1:8080', 'key', ['timout' => 1]);
            },
        ];
        foreach ($cases as $i => $case) {
            try {
                $case();
                $this->fail("case $i did not throw");
            } catch (\InvalidArgumentException $e) {
                $this->assertNotSame('', $e->getMessage());
            }
        }
    }
}
