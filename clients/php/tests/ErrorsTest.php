<?php

namespace Stellwerk\Tests;

use PHPUnit\Framework\TestCase;
use Stellwerk\Client;
use Stellwerk\Exception\ApiException;
use Stellwerk\Exception\BadRequest;
use Stellwerk\Exception\Forbidden;
use Stellwerk\Exception\NotFound;
use Stellwerk\Exception\RateLimited;
use Stellwerk\Exception\StellwerkException;
use Stellwerk\Exception\Timeout;
use Stellwerk\Exception\TooLarge;
use Stellwerk\Exception\TransportException;
use Stellwerk\Exception\Unauthorized;
use Stellwerk\Exception\Unavailable;
use Stellwerk\Exception\UnexpectedResponse;
use Stellwerk\Tests\Support\Broker;
use Stellwerk\Tests\Support\Ids;
use Stellwerk\Tests\Support\Process;
use Stellwerk\Tests\Support\RedisServer;

/** Every error answer of the broker as its typed exception, and failures without an answer. */
final class ErrorsTest extends TestCase
{
    /**
     * Runs `$call`, expects `$class`, and checks what every API error keeps.
     *
     * @template T of StellwerkException
     * @param class-string<T> $class
     * @return T
     */
    private function failure(callable $call, string $class, ?int $status = null, ?string $code = null): StellwerkException
    {
        try {
            $call();
        } catch (StellwerkException $e) {
            $this->assertInstanceOf($class, $e, get_class($e) . ': ' . $e->getMessage());
            if ($e instanceof ApiException) {
                $this->assertSame($status, $e->getStatusCode(), $e->getMessage());
                $this->assertSame($status, $e->getCode());
                $this->assertSame($code, $e->getErrorCode(), $e->getMessage());
                $this->assertNotSame('', $e->getErrorMessage());
            }
            return $e;
        }
        $this->fail("expected $class");
    }

    public function testEveryCallWithAWrongKeyIsUnauthorized(): void
    {
        $broker = Broker::shared();
        $client = new Client($broker->url, 'not-the-api-key');
        $calls = [
            'publish' => function () use ($client) {
                $client->publish('public:news', 1);
            },
            'publishMany' => function () use ($client) {
                $client->publishMany(['public:news'], 1);
            },
            'presence' => function () use ($client) {
                $client->presence('course:' . Ids::hex() . ':chat');
            },
            'history' => function () use ($client) {
                $client->history('public:news', 5);
            },
            'channels' => function () use ($client) {
                $client->channels();
            },
            'disconnectUser' => function () use ($client) {
                $client->disconnectUser('someone');
            },
            'info' => function () use ($client) {
                $client->info();
            },
        ];
        foreach ($calls as $name => $call) {
            $e = $this->failure($call, Unauthorized::class, 401, 'unauthorized');
            $this->assertStringNotContainsString('not-the-api-key', $e->getMessage(), "$name: the key stays secret");
        }
    }

    public function testAPluginsRefusalIsForbiddenWithItsReason(): void
    {
        $broker = Broker::shared();
        $client = new Client($broker->url, $broker->apiKey);
        $e = $this->failure(function () use ($client) {
            $client->publish('course:not-a-course-id:news', ['type' => 'news.created']);
        }, Forbidden::class, 403, 'forbidden');
        $this->assertStringContainsString('not a Stud.IP course id', $e->getErrorMessage());
        $this->assertSame('POST', $e->getMethod());
        $this->assertSame('/api/publish', $e->getPath());

        // All or nothing: the valid channel before it got nothing either.
        $good = 'course:' . Ids::hex() . ':news';
        $this->failure(function () use ($client, $good) {
            $client->publishMany([$good, 'user:a:b'], 1);
        }, Forbidden::class, 403, 'forbidden');
        $this->assertSame([], $client->history($good)['messages']);
    }

    public function testAnUngovernedNamespaceIsNotFound(): void
    {
        $broker = Broker::shared();
        $client = new Client($broker->url, $broker->apiKey);
        foreach ([
            function () use ($client) {
                $client->publish('nope:x', 1);
            },
            function () use ($client) {
                $client->presence('nope:x');
            },
            function () use ($client) {
                $client->history('nope:x');
            },
        ] as $call) {
            $this->failure($call, NotFound::class, 404, 'not_found');
        }
    }

    public function testMalformedRequestsAreBadRequest(): void
    {
        $broker = Broker::shared();
        $client = new Client($broker->url, $broker->apiKey);
        foreach ([
            function () use ($client) {
                $client->publish('no namespace here', 1);
            },
            function () use ($client) {
                $client->presence('public:news');  // presence is off for `public`
            },
            function () use ($client) {
                $client->channels('bad prefix!');
            },
        ] as $call) {
            $this->failure($call, BadRequest::class, 400, 'bad_request');
        }
    }

    public function testABodyOverTheLimitIsTooLarge(): void
    {
        $broker = Broker::shared();
        $client = new Client($broker->url, $broker->apiKey);
        $channel = 'public:php-large-' . Ids::hex();
        $this->failure(function () use ($client, $channel) {
            $client->publish($channel, str_repeat('x', 1100 * 1024));  // default limit: 1 MiB
        }, TooLarge::class, 413, 'too_large');
        $this->assertSame(1, $client->publish($channel, str_repeat('x', 900 * 1024))['offset'], 'under the limit it goes through');
    }

    public function testAPublishFloodIsRateLimitedWithRetryAfter(): void
    {
        $broker = Broker::start([
            'STELLWERK_RATE_LIMITS_API_PUBLISHES_PER_SECOND' => '1',
            'STELLWERK_RATE_LIMITS_API_PUBLISHES_BURST' => '3',
        ]);
        $client = new Client($broker->url, $broker->apiKey);
        $refusal = null;
        for ($n = 0; $n < 50 && $refusal === null; $n++) {
            try {
                $client->publish('public:flood', ['n' => $n]);
            } catch (RateLimited $e) {
                $refusal = $e;
            }
        }
        $this->assertNotNull($refusal, 'no 429 within 50 publishes at 1 a second');
        $this->failure(function () use ($refusal) {
            throw $refusal;
        }, RateLimited::class, 429, 'rate_limited');
        $this->assertIsInt($refusal->getRetryAfter());
        $this->assertGreaterThanOrEqual(1, $refusal->getRetryAfter());
        $this->assertStringContainsString('rate_limits.api_publishes_per_second', $refusal->getErrorMessage());
        $broker->stop();
    }

    public function testWithoutRedisAPublishIsUnavailable(): void
    {
        $redis = new RedisServer();
        $broker = Broker::start([
            'STELLWERK_ENGINE_KIND' => 'redis',
            'STELLWERK_ENGINE_REDIS_URL' => $redis->url(),
        ]);
        $client = new Client($broker->url, $broker->apiKey, ['timeout' => 20]);
        $this->assertSame(1, $client->publish('public:outage', ['n' => 1])['offset']);

        $redis->kill();

        $e = $this->failure(function () use ($client) {
            $client->publish('public:outage', ['n' => 2]);
        }, Unavailable::class, 503, 'unavailable');
        $this->assertStringNotContainsString('redis://', $e->getMessage());
        // Every call that needs Redis says so the same way (each takes the broker a moment).
        $calls = [
            'publishMany' => function () use ($client) {
                $client->publishMany(['public:outage', 'public:outage-2'], 1);
            },
            'history' => function () use ($client) {
                $client->history('public:outage');
            },
            'presence' => function () use ($client) {
                $client->presence('course:' . Ids::hex() . ':chat');
            },
            'channels' => function () use ($client) {
                $client->channels();
            },
            'disconnectUser' => function () use ($client) {
                $client->disconnectUser('someone');
            },
        ];
        foreach ($calls as $call) {
            $this->failure($call, Unavailable::class, 503, 'unavailable');
        }
        $this->assertIsString($client->info()['version'], 'info needs no Redis');
        $broker->stop();
    }

    public function testNothingListeningIsATransportErrorNotATimeout(): void
    {
        $client = new Client('http://127.0.0.1:' . Process::freePort(), 'key');
        $e = $this->failure(function () use ($client) {
            $client->info();
        }, TransportException::class);
        $this->assertNotInstanceOf(Timeout::class, $e);
        $this->assertSame(CURLE_COULDNT_CONNECT, $e->getCurlErrno());
    }

    public function testAServerThatAcceptsButNeverAnswersIsATimeoutAfterConnecting(): void
    {
        // Listening, never accepting: the kernel completes the handshake, nobody answers.
        $server = stream_socket_server('tcp://127.0.0.1:0', $errno, $errstr);
        $this->assertNotFalse($server, $errstr);
        $client = new Client('http://' . stream_socket_get_name($server, false), 'key', ['timeout' => 0.3]);

        $e = $this->failure(function () use ($client) {
            $client->publish('public:news', 1);
        }, Timeout::class);
        $this->assertSame(CURLE_OPERATION_TIMEDOUT, $e->getCurlErrno());
        $this->assertFalse($e->duringConnect(), $e->getMessage());
        fclose($server);
    }

    public function testAConnectionThatIsNeverEstablishedIsAConnectTimeout(): void
    {
        // A listen backlog of 0, filled by one connection nobody accepts: further SYNs are
        // dropped, so the handshake never completes (all on 127.0.0.1).
        $context = stream_context_create(['socket' => ['backlog' => 0]]);
        $server = stream_socket_server('tcp://127.0.0.1:0', $errno, $errstr, STREAM_SERVER_BIND | STREAM_SERVER_LISTEN, $context);
        $this->assertNotFalse($server, $errstr);
        $address = stream_socket_get_name($server, false);
        $fill = [];
        for ($i = 0; $i < 3; $i++) {
            $socket = @stream_socket_client("tcp://$address", $errno, $errstr, 0.2);
            if ($socket !== false) {
                $fill[] = $socket;
            }
        }
        $client = new Client("http://$address", 'key', ['connect_timeout' => 0.2, 'timeout' => 10]);

        $e = $this->failure(function () use ($client) {
            $client->info();
        }, Timeout::class);
        $this->assertTrue($e->duringConnect(), $e->getMessage());
        $this->assertNotEmpty($fill);
        fclose($server);
    }

    public function testAnswersThatAreNotTheBrokersJsonMapByStatus(): void
    {
        $port = Process::freePort();
        $server = new Process('php-S', [PHP_BINARY, '-S', "127.0.0.1:$port", __DIR__ . '/Support/fake-broker.php'], ['PATH' => (string) getenv('PATH')]);
        $server->waitForLog('/started|Listening/i', 10);
        $client = new Client("http://127.0.0.1:$port", 'key');

        $e = $this->failure(function () use ($client) {
            $client->info();
        }, UnexpectedResponse::class);
        $this->assertSame(200, $e->getStatusCode());
        $this->assertStringContainsString('It works!', $e->getBody());

        $e = $this->failure(function () use ($client) {
            $client->publish('public:news', 1);
        }, Unavailable::class, 502, null);
        $this->assertStringContainsString('502 Bad Gateway', $e->getErrorMessage());

        $e = $this->failure(function () use ($client) {
            $client->channels();
        }, RateLimited::class, 429, null);
        $this->assertGreaterThanOrEqual(60, $e->getRetryAfter(), 'an HTTP-date Retry-After becomes seconds');

        $e = $this->failure(function () use ($client) {
            $client->disconnectUser('u');
        }, ApiException::class, 418, 'teapot');
        $this->assertSame(ApiException::class, get_class($e), 'unknown codes and statuses are the base class');
        $server->stop();
    }
}
