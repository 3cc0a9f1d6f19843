<?php

namespace Stellwerk;

use Stellwerk\Exception\ApiException;
use Stellwerk\Exception\BadRequest;
use Stellwerk\Exception\Forbidden;
use Stellwerk\Exception\InternalError;
use Stellwerk\Exception\NotFound;
use Stellwerk\Exception\RateLimited;
use Stellwerk\Exception\StellwerkException;
use Stellwerk\Exception\Timeout;
use Stellwerk\Exception\TooLarge;
use Stellwerk\Exception\TransportException;
use Stellwerk\Exception\Unauthorized;
use Stellwerk\Exception\Unavailable;
use Stellwerk\Exception\UnexpectedResponse;

/**
 * Stellwerk's HTTP API for Stud.IP's server side: publish, presence, history, active
 * channels, disconnecting a user, broker info. One small class over curl, no dependencies.
 *
 * ```php
 * $stellwerk = new \Stellwerk\Client('http://127.0.0.1:8080', $apiKey);
 * $stellwerk->publish('course:' . $course_id . ':news', ['type' => 'news.created', 'id' => $news_id]);
 * ```
 *
 * Every failed call throws a subclass of {@see StellwerkException}: an {@see ApiException}
 * (Unauthorized, Forbidden, NotFound, TooLarge, RateLimited, Unavailable, …) when the broker
 * answered with an error, a {@see TransportException} ({@see Timeout}) when it did not answer.
 *
 * Options (third constructor argument):
 * - `connect_timeout` (seconds, float, default 2): establishing the TCP (and TLS) connection;
 * - `timeout` (seconds, float, default 5): the whole request, connect included;
 * - `fire_and_forget` (bool, default false): publish() and publishMany() queue the message and
 *   return null at once; the queue is sent when the PHP request ends (see README,
 *   "Fire and forget") or when flush() is called; failures go to `on_error`;
 * - `finish_request` (bool, default true): with fire_and_forget, end the HTTP response to the
 *   browser (`fastcgi_finish_request()` / `litespeed_finish_request()`, where the SAPI has it)
 *   before sending the queue at shutdown;
 * - `on_error` (callable(StellwerkException): void): where failures of queued publishes go;
 *   default: `error_log()`;
 * - `user_agent` (string).
 *
 * The API key is sent as `Authorization: Bearer`; it never appears in exception messages.
 */
final class Client
{
    public const VERSION = '0.1.0';

    /** Queued fire-and-forget publishes kept at most; more are dropped (reported to on_error). */
    public const MAX_PENDING = 1000;

    private const OPTIONS = [
        'connect_timeout',
        'timeout',
        'fire_and_forget',
        'finish_request',
        'on_error',
        'user_agent',
    ];

    /** @var string */
    private $baseUrl;
    /** @var string */
    private $apiKey;
    /** @var float */
    private $connectTimeout = 2.0;
    /** @var float */
    private $timeout = 5.0;
    /** @var bool */
    private $fireAndForget = false;
    /** @var bool */
    private $finishRequest = true;
    /** @var callable|null */
    private $onError;
    /** @var string */
    private $userAgent;
    /** @var resource|\CurlHandle|null reused between calls, so that keep-alive works */
    private $curl;
    /** @var list<array{0: string, 1: string}> queued [path, body] of fire-and-forget publishes */
    private $pending = [];
    /** @var bool */
    private $shutdownRegistered = false;

    /**
     * @param string $baseUrl the broker's base URL, e.g. `http://127.0.0.1:8080` or
     *                        `https://stellwerk.example.org` (a path prefix behind a proxy is kept)
     * @param string $apiKey  the broker's `api_key` (`STELLWERK_API_KEY`); never hand it to a browser
     * @param array<string, mixed> $options see the class comment
     */
    public function __construct(string $baseUrl, string $apiKey, array $options = [])
    {
        if (!preg_match('#^https?://[^/?\#]+#i', $baseUrl)) {
            throw new \InvalidArgumentException(
                "Stellwerk base URL must start with http:// or https:// and name a host, got '$baseUrl'"
            );
        }
        if ($apiKey === '') {
            throw new \InvalidArgumentException('Stellwerk API key is empty');
        }
        $this->baseUrl = rtrim($baseUrl, '/');
        $this->apiKey = $apiKey;
        $this->userAgent = 'stellwerk-php/' . self::VERSION . ' PHP/' . PHP_VERSION;
        $this->configure($options);
    }

    /**
     * A copy of this client in (or out of) fire-and-forget mode, with its own queue. For code
     * that publishes both ways: `$stellwerk->withFireAndForget()->publish(…)`.
     */
    public function withFireAndForget(bool $enabled = true): self
    {
        $copy = clone $this;
        $copy->fireAndForget = $enabled;
        return $copy;
    }

    /** A clone shares nothing mutable with the original: own curl handle, own queue. */
    public function __clone()
    {
        $this->curl = null;
        $this->pending = [];
        $this->shutdownRegistered = false;
    }

    /**
     * Publishes `$data` (any JSON-encodable value) on one channel; the channel's plugin may
     * refuse (Forbidden) or reshape it.
     *
     * @return array{channel: string, epoch: string, offset: int}|null the message's position,
     *         or null in fire-and-forget mode (queued, not sent yet)
     * @throws StellwerkException
     */
    public function publish(string $channel, $data): ?array
    {
        $results = $this->send('/api/publish', ['channel' => $channel, 'data' => $data]);
        return $results === null ? null : $results[0];
    }

    /**
     * Publishes `$data` on several channels in one request: every channel is checked (name,
     * plugin) before any is published, so all get it or none does.
     *
     * @param list<string> $channels at least one
     * @return list<array{channel: string, epoch: string, offset: int}>|null one result per
     *         channel in the given order, or null in fire-and-forget mode
     * @throws StellwerkException
     */
    public function publishMany(array $channels, $data): ?array
    {
        if ($channels === []) {
            throw new \InvalidArgumentException('publishMany needs at least one channel');
        }
        foreach ($channels as $channel) {
            if (!is_string($channel)) {
                throw new \InvalidArgumentException('channel names must be strings');
            }
        }
        return $this->send('/api/publish', ['channels' => array_values($channels), 'data' => $data]);
    }

    /**
     * Who is subscribed to a channel now (channels whose plugin has presence on, e.g.
     * `course:…`): each user once, sorted by user id.
     *
     * @return list<array{user: string, info: array<string, mixed>}>
     * @throws StellwerkException BadRequest where the plugin has presence off
     */
    public function presence(string $channel): array
    {
        $body = $this->request('GET', '/api/channels/' . rawurlencode($channel) . '/presence', null);
        return self::listField($body, 'members', 'GET', '/api/channels/…/presence');
    }

    /**
     * What the channel still keeps, oldest first: `['channel' => …, 'epoch' => …, 'messages' =>
     * [['offset' => 11, 'data' => …], …]]`. `$limit`: at most this many of the latest;
     * `$since`: only offsets greater than this (within the returned epoch).
     *
     * @return array{channel: string, epoch: string, messages: list<array{offset: int, data: mixed}>}
     * @throws StellwerkException
     */
    public function history(string $channel, ?int $limit = null, ?int $since = null): array
    {
        $query = [];
        if ($limit !== null) {
            $query['limit'] = self::nonNegative($limit, 'limit');
        }
        if ($since !== null) {
            $query['since'] = self::nonNegative($since, 'since');
        }
        $path = '/api/channels/' . rawurlencode($channel) . '/history';
        if ($query !== []) {
            $path .= '?' . http_build_query($query, '', '&', PHP_QUERY_RFC3986);
        }
        $body = $this->request('GET', $path, null);
        if (!isset($body['epoch'], $body['messages']) || !is_array($body['messages'])) {
            throw self::unexpected('GET', '/api/channels/…/history', $body);
        }
        return $body;
    }

    /**
     * Channels with at least one subscriber on this node, sorted by name, optionally only
     * those starting with `$prefix` (e.g. `course:` or `course:<course_id>:`).
     *
     * @return list<array{channel: string, subscribers: int}> `subscribers` counts connections
     * @throws StellwerkException
     */
    public function channels(string $prefix = ''): array
    {
        $path = '/api/channels';
        if ($prefix !== '') {
            $path .= '?prefix=' . rawurlencode($prefix);
        }
        $body = $this->request('GET', $path, null);
        return self::listField($body, 'channels', 'GET', '/api/channels');
    }

    /**
     * Cuts off every connection of the user on this node (logout, locked account): WebSockets
     * close with 4003, SSE streams end. A user without connections is not an error.
     *
     * @return int the number of connections cut off
     * @throws StellwerkException
     */
    public function disconnectUser(string $userId): int
    {
        if ($userId === '') {
            throw new \InvalidArgumentException('user id is empty');
        }
        $body = $this->request('POST', '/api/users/' . rawurlencode($userId) . '/disconnect', '');
        if (!isset($body['disconnected']) || !is_int($body['disconnected'])) {
            throw self::unexpected('POST', '/api/users/…/disconnect', $body);
        }
        return $body['disconnected'];
    }

    /**
     * The broker's version, uptime, load and plugins:
     * `['version' => '0.1.0', 'uptime_seconds' => …, 'connections' => …, 'channels' => …,
     *   'subscriptions' => …, 'plugins' => [['name' => 'course', 'version' => …, 'namespaces' => […]], …]]`.
     *
     * @return array<string, mixed>
     * @throws StellwerkException
     */
    public function info(): array
    {
        return $this->request('GET', '/api/info', null);
    }

    /** How many fire-and-forget publishes are queued and not yet sent. */
    public function pendingCount(): int
    {
        return count($this->pending);
    }

    /**
     * Sends the queued fire-and-forget publishes now, one after the other in the order they
     * were queued (on one kept-alive connection), all of them within `timeout` seconds
     * together. Failures go to `on_error`; nothing is thrown and nothing is retried. Once the
     * broker proves unreachable (a transport error or timeout), or the time is up, the rest of
     * the queue is dropped and reported.
     *
     * @return int how many of them the broker accepted
     */
    public function flush(): int
    {
        $queue = $this->pending;
        $this->pending = [];
        $accepted = 0;
        $deadline = microtime(true) + $this->timeout;
        $unreachable = null;
        foreach ($queue as [$path, $body]) {
            $left = $deadline - microtime(true);
            if ($unreachable !== null) {
                $this->report(new TransportException(
                    "Stellwerk POST $path: not sent, the broker was unreachable: " . $unreachable->getMessage(),
                    $unreachable->getCurlErrno()
                ));
                continue;
            }
            if ($left <= 0) {
                $this->report(new Timeout("Stellwerk POST $path: not sent, the flush took its whole timeout", CURLE_OPERATION_TIMEDOUT, true));
                continue;
            }
            try {
                $this->request('POST', $path, $body, $left);
                $accepted++;
            } catch (TransportException $e) {
                $unreachable = $e;
                $this->report($e);
            } catch (StellwerkException $e) {
                $this->report($e);
            }
        }
        return $accepted;
    }

    /**
     * Shutdown hook of fire-and-forget mode (registered on the first queued publish). Public
     * only because PHP calls it; it re-registers itself once so that it runs after the shutdown
     * functions the application registered later, then ends the response and flushes.
     *
     * @internal
     */
    public function onShutdown(bool $last = false): void
    {
        if (!$last) {
            register_shutdown_function([$this, 'onShutdown'], true);
            return;
        }
        // A publish from a shutdown function that runs after this one registers anew.
        $this->shutdownRegistered = false;
        if ($this->pending === []) {
            return;
        }
        if ($this->finishRequest) {
            if (function_exists('fastcgi_finish_request')) {
                fastcgi_finish_request();
            } elseif (function_exists('litespeed_finish_request')) {
                litespeed_finish_request();
            }
        }
        $this->flush();
    }

    // ---------------------------------------------------------------------------------------

    /** @param array<string, mixed> $options */
    private function configure(array $options): void
    {
        $unknown = array_diff(array_keys($options), self::OPTIONS);
        if ($unknown !== []) {
            throw new \InvalidArgumentException(
                'unknown Stellwerk client option(s): ' . implode(', ', $unknown)
                . ' (known: ' . implode(', ', self::OPTIONS) . ')'
            );
        }
        foreach (['connect_timeout' => 'connectTimeout', 'timeout' => 'timeout'] as $key => $field) {
            if (array_key_exists($key, $options)) {
                $value = $options[$key];
                if (!is_int($value) && !is_float($value) || $value <= 0) {
                    throw new \InvalidArgumentException("$key must be a positive number of seconds");
                }
                $this->$field = (float) $value;
            }
        }
        if (array_key_exists('fire_and_forget', $options)) {
            $this->fireAndForget = (bool) $options['fire_and_forget'];
        }
        if (array_key_exists('finish_request', $options)) {
            $this->finishRequest = (bool) $options['finish_request'];
        }
        if (array_key_exists('on_error', $options)) {
            if ($options['on_error'] !== null && !is_callable($options['on_error'])) {
                throw new \InvalidArgumentException('on_error must be callable');
            }
            $this->onError = $options['on_error'];
        }
        if (array_key_exists('user_agent', $options)) {
            $this->userAgent = (string) $options['user_agent'];
        }
    }

    /**
     * A publish: sent now, or queued in fire-and-forget mode.
     *
     * @param array<string, mixed> $payload
     * @return list<array{channel: string, epoch: string, offset: int}>|null
     */
    private function send(string $path, array $payload): ?array
    {
        $body = self::encode($payload);
        if ($this->fireAndForget) {
            $this->enqueue($path, $body);
            return null;
        }
        $response = $this->request('POST', $path, $body);
        return self::listField($response, 'results', 'POST', $path);
    }

    private function enqueue(string $path, string $body): void
    {
        if (count($this->pending) >= self::MAX_PENDING) {
            $this->report(new TransportException(
                'Stellwerk POST ' . $path . ': fire-and-forget queue full (' . self::MAX_PENDING
                . ' messages); message dropped',
                0
            ));
            return;
        }
        $this->pending[] = [$path, $body];
        if (!$this->shutdownRegistered) {
            $this->shutdownRegistered = true;
            register_shutdown_function([$this, 'onShutdown']);
        }
    }

    /**
     * One request, waiting for the answer.
     *
     * @return array<mixed> the decoded JSON body of a 2xx answer
     * @throws StellwerkException
     */
    private function request(string $method, string $path, ?string $body, ?float $timeout = null): array
    {
        $headers = new \ArrayObject();
        if ($this->curl === null) {
            $this->curl = curl_init();
        } else {
            curl_reset($this->curl);
        }
        $this->prepare($this->curl, $method, $path, $body, $headers, $timeout ?? $this->timeout);
        $raw = curl_exec($this->curl);
        $errno = $raw === false ? curl_errno($this->curl) : 0;
        return $this->evaluate($this->curl, $errno, is_string($raw) ? $raw : '', $headers, $method, $path);
    }

    /**
     * @param resource|\CurlHandle $ch
     * @param \ArrayObject<string, string> $headers filled with the response headers (lower-case names)
     */
    private function prepare($ch, string $method, string $path, ?string $body, \ArrayObject $headers, float $timeout): void
    {
        $requestHeaders = [
            'Authorization: Bearer ' . $this->apiKey,
            'Accept: application/json',
            // No `Expect: 100-continue` round trip for bodies above 1 KiB.
            'Expect:',
        ];
        $options = [
            CURLOPT_URL => $this->baseUrl . $path,
            CURLOPT_RETURNTRANSFER => true,
            CURLOPT_HEADER => false,
            CURLOPT_FOLLOWLOCATION => false,
            CURLOPT_NOSIGNAL => true,
            CURLOPT_CONNECTTIMEOUT_MS => (int) ceil(min($this->connectTimeout, $timeout) * 1000),
            CURLOPT_TIMEOUT_MS => (int) ceil($timeout * 1000),
            CURLOPT_USERAGENT => $this->userAgent,
            CURLOPT_HEADERFUNCTION => static function ($ch, string $line) use ($headers): int {
                if (strncasecmp($line, 'HTTP/', 5) === 0) {
                    // A new response (after `100 Continue`, say): forget the previous one's.
                    $headers->exchangeArray([]);
                } elseif (($colon = strpos($line, ':')) !== false) {
                    $headers[strtolower(trim(substr($line, 0, $colon)))] = trim(substr($line, $colon + 1));
                }
                return strlen($line);
            },
        ];
        if ($method === 'POST') {
            $options[CURLOPT_POST] = true;
            $options[CURLOPT_POSTFIELDS] = $body ?? '';
            $requestHeaders[] = 'Content-Type: application/json';
        } else {
            $options[CURLOPT_HTTPGET] = true;
        }
        $options[CURLOPT_HTTPHEADER] = $requestHeaders;
        curl_setopt_array($ch, $options);
    }

    /**
     * Turns curl's outcome into the decoded body or the matching exception.
     *
     * @param resource|\CurlHandle $ch
     * @param \ArrayObject<string, string> $headers
     * @return array<mixed>
     * @throws StellwerkException
     */
    private function evaluate($ch, int $errno, string $raw, \ArrayObject $headers, string $method, string $path): array
    {
        if ($errno !== 0) {
            $message = sprintf('Stellwerk %s %s: %s (curl error %d)', $method, $path, curl_error($ch) ?: curl_strerror($errno), $errno);
            if ($errno === CURLE_OPERATION_TIMEDOUT) {
                // No connect time: the connection itself was never established.
                throw new Timeout($message, $errno, !(curl_getinfo($ch, CURLINFO_CONNECT_TIME) > 0));
            }
            throw new TransportException($message, $errno);
        }
        $status = (int) curl_getinfo($ch, CURLINFO_RESPONSE_CODE);
        $decoded = json_decode($raw, true);
        if ($status >= 200 && $status < 300) {
            if (!is_array($decoded)) {
                throw new UnexpectedResponse(
                    sprintf('Stellwerk %s %s: %d answer is not a JSON object', $method, $path, $status),
                    $status,
                    $raw
                );
            }
            return $decoded;
        }
        throw self::error($status, $decoded, $raw, $headers, $method, $path);
    }

    /**
     * The exception for an error answer: by the API's `error.code`, or by the status where
     * the body is not the broker's JSON.
     *
     * @param mixed $decoded
     * @param \ArrayObject<string, string> $headers
     */
    private static function error(int $status, $decoded, string $raw, \ArrayObject $headers, string $method, string $path): ApiException
    {
        $code = null;
        $message = '';
        if (is_array($decoded) && isset($decoded['error']) && is_array($decoded['error'])) {
            $code = isset($decoded['error']['code']) && is_string($decoded['error']['code']) ? $decoded['error']['code'] : null;
            $message = isset($decoded['error']['message']) && is_string($decoded['error']['message']) ? $decoded['error']['message'] : '';
        }
        if ($message === '') {
            $text = trim(preg_replace('/\s+/', ' ', strip_tags(substr($raw, 0, 300))) ?? '');
            $message = $text !== '' ? $text : 'HTTP ' . $status . ' without a body';
        }
        $byCode = [
            'bad_request' => BadRequest::class,
            'unauthorized' => Unauthorized::class,
            'forbidden' => Forbidden::class,
            'not_found' => NotFound::class,
            'too_large' => TooLarge::class,
            'rate_limited' => RateLimited::class,
            'internal' => InternalError::class,
            'unavailable' => Unavailable::class,
        ];
        $byStatus = [
            400 => BadRequest::class,
            401 => Unauthorized::class,
            403 => Forbidden::class,
            404 => NotFound::class,
            413 => TooLarge::class,
            429 => RateLimited::class,
            500 => InternalError::class,
            502 => Unavailable::class,
            503 => Unavailable::class,
            504 => Unavailable::class,
        ];
        $class = ($code !== null ? ($byCode[$code] ?? null) : null) ?? $byStatus[$status] ?? ApiException::class;
        if ($class === RateLimited::class) {
            return new RateLimited($status, $code, $message, $method, $path, self::retryAfter($headers['retry-after'] ?? null));
        }
        return new $class($status, $code, $message, $method, $path);
    }

    /** `Retry-After` as seconds: delta-seconds, or an HTTP date (seconds from now, at least 0). */
    private static function retryAfter(?string $value): ?int
    {
        if ($value === null || $value === '') {
            return null;
        }
        if (ctype_digit($value)) {
            return (int) $value;
        }
        $at = strtotime($value);
        return $at === false ? null : max(0, $at - time());
    }

    /**
     * @param array<mixed> $body
     * @return list<mixed>
     */
    private static function listField(array $body, string $field, string $method, string $path): array
    {
        if (!isset($body[$field]) || !is_array($body[$field])) {
            throw self::unexpected($method, $path, $body);
        }
        return $body[$field];
    }

    /** @param array<mixed> $body */
    private static function unexpected(string $method, string $path, array $body): UnexpectedResponse
    {
        return new UnexpectedResponse(
            sprintf('Stellwerk %s %s: the answer lacks the documented fields', $method, $path),
            200,
            (string) json_encode($body)
        );
    }

    /** @param mixed $value */
    private static function encode($value): string
    {
        try {
            return json_encode(
                $value,
                JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_PRESERVE_ZERO_FRACTION | JSON_THROW_ON_ERROR
            );
        } catch (\JsonException $e) {
            throw new \InvalidArgumentException('Stellwerk: data cannot be encoded as JSON: ' . $e->getMessage(), 0, $e);
        }
    }

    private static function nonNegative(int $value, string $name): int
    {
        if ($value < 0) {
            throw new \InvalidArgumentException("$name must not be negative");
        }
        return $value;
    }

    private function report(StellwerkException $e): void
    {
        if ($this->onError !== null) {
            ($this->onError)($e);
            return;
        }
        error_log('stellwerk-php (fire and forget): ' . $e->getMessage());
    }
}
