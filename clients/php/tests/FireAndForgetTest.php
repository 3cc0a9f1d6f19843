<?php

namespace Stellwerk\Tests;

use PHPUnit\Framework\TestCase;
use Stellwerk\Client;
use Stellwerk\Exception\StellwerkException;
use Stellwerk\Exception\TransportException;
use Stellwerk\Exception\Unauthorized;
use Stellwerk\Tests\Support\Broker;
use Stellwerk\Tests\Support\Ids;
use Stellwerk\Tests\Support\Process;

/** Fire-and-forget: queued, sent in order at flush() or when the request ends, never throwing. */
final class FireAndForgetTest extends TestCase
{
    public function testPublishesAreQueuedAndSentInOrderByFlush(): void
    {
        $broker = Broker::shared();
        $client = new Client($broker->url, $broker->apiKey);
        $later = $client->withFireAndForget();
        $channel = 'public:php-ff-' . Ids::hex();

        for ($n = 1; $n <= 5; $n++) {
            $this->assertNull($later->publish($channel, ['n' => $n]));
        }
        $this->assertNull($later->publishMany([$channel], ['n' => 6]));
        $this->assertSame(6, $later->pendingCount());
        $this->assertSame(0, $client->pendingCount(), 'the original client has its own (empty) queue');
        $this->assertSame([], $client->history($channel)['messages'], 'nothing sent before the flush');

        $this->assertSame(6, $later->flush());

        $this->assertSame(0, $later->pendingCount());
        $history = $client->history($channel)['messages'];
        $this->assertSame([1, 2, 3, 4, 5, 6], array_column(array_column($history, 'data'), 'n'), 'queue order kept');
        $this->assertSame(0, $later->flush(), 'an empty queue sends nothing');
    }

    public function testTheQueueGoesOutWhenTheRequestEnds(): void
    {
        $broker = Broker::shared();
        $client = new Client($broker->url, $broker->apiKey);
        $channel = 'public:php-ff-shutdown-' . Ids::hex();

        [$status, $stdout, $stderr] = self::php([__DIR__ . '/Support/fire-and-forget.php', $broker->url, $broker->apiKey, $channel, '3']);

        $this->assertSame(0, $status, $stderr);
        $this->assertSame("page done\napp shutdown, queued: 3\n", $stdout, 'sent after the page and the app\'s own shutdown functions');
        $this->assertSame('', $stderr);
        $this->assertSame([1, 2, 3, 'late'], array_column(array_column($client->history($channel)['messages'], 'data'), 'n'));
    }

    public function testFailuresGoToOnErrorOrTheErrorLogNeverToTheCaller(): void
    {
        $broker = Broker::shared();
        $errors = [];
        $client = new Client($broker->url, 'wrong-key', [
            'fire_and_forget' => true,
            'on_error' => static function (StellwerkException $e) use (&$errors): void {
                $errors[] = $e;
            },
        ]);
        $client->publish('public:news', 1);
        $client->publish('public:news', 2);

        $this->assertSame(0, $client->flush());

        $this->assertCount(2, $errors, 'each refusal reported, the second still tried');
        $this->assertContainsOnlyInstancesOf(Unauthorized::class, $errors);

        // Without on_error: error_log (stderr for the CLI), and the script still ends normally.
        [$status, $stdout, $stderr] = self::php([__DIR__ . '/Support/fire-and-forget.php', $broker->url, 'wrong-key', 'public:news', '1']);
        $this->assertSame(0, $status);
        $this->assertStringContainsString('page done', $stdout);
        $this->assertStringContainsString('stellwerk-php (fire and forget): Stellwerk POST /api/publish: 401 unauthorized', $stderr);
    }

    public function testAnUnreachableBrokerDropsTheRestOfTheQueueAtOnce(): void
    {
        $errors = [];
        $client = new Client('http://127.0.0.1:' . Process::freePort(), 'key', [
            'fire_and_forget' => true,
            'on_error' => static function (StellwerkException $e) use (&$errors): void {
                $errors[] = $e;
            },
        ]);
        for ($n = 0; $n < 3; $n++) {
            $client->publish('public:news', $n);
        }

        $this->assertSame(0, $client->flush());

        $this->assertCount(3, $errors);
        $this->assertContainsOnlyInstancesOf(TransportException::class, $errors);
        $this->assertSame(CURLE_COULDNT_CONNECT, $errors[0]->getCurlErrno());
        $this->assertStringContainsString('not sent, the broker was unreachable', $errors[2]->getMessage());
    }

    public function testTheQueueIsBounded(): void
    {
        $errors = [];
        $client = new Client('http://127.0.0.1:' . Process::freePort(), 'key', [
            'fire_and_forget' => true,
            'on_error' => static function (StellwerkException $e) use (&$errors): void {
                $errors[] = $e->getMessage();
            },
        ]);
        for ($n = 0; $n <= Client::MAX_PENDING; $n++) {
            $client->publish('public:news', $n);
        }
        $this->assertSame(Client::MAX_PENDING, $client->pendingCount());
        $this->assertCount(1, $errors);
        $this->assertStringContainsString('queue full', $errors[0]);
        $errors = [];
        $client->flush();
        $this->assertCount(Client::MAX_PENDING, $errors);
    }

    /**
     * Runs PHP with `$args`; bounded by a kill after 60 s.
     *
     * @param list<string> $args
     * @return array{0: int, 1: string, 2: string} exit status, stdout, stderr
     */
    private static function php(array $args): array
    {
        $proc = proc_open(
            array_merge(['timeout', '60', PHP_BINARY, '-d', 'display_errors=stderr', '-d', 'log_errors=1', '-d', 'error_log='], $args),
            [0 => ['file', '/dev/null', 'r'], 1 => ['pipe', 'w'], 2 => ['pipe', 'w']],
            $pipes
        );
        self::assertIsResource($proc);
        $stdout = stream_get_contents($pipes[1]);
        $stderr = stream_get_contents($pipes[2]);
        fclose($pipes[1]);
        fclose($pipes[2]);
        return [proc_close($proc), (string) $stdout, (string) $stderr];
    }
}
