<?php

namespace StellwerkStudip\Tests;

use PHPUnit\Framework\TestCase;
use Stellwerk\Client;
use Stellwerk\Tests\Support\Broker;
use Stellwerk\Tests\Support\Ids;
use Stellwerk\Tests\Support\SseStream;

/**
 * StellwerkPlugin.php itself, run in a PHP process against stand-ins of the Stud.IP classes it
 * uses (tests/stubs/studip.php) and the real broker. This checks the glue code runs and is
 * wired to the tested logic; it cannot show that the stand-ins behave like Stud.IP.
 */
final class PluginSmokeTest extends TestCase
{
    public function testThePluginAddsTheClientMintsTokensAndPublishesOnNotifications(): void
    {
        $broker = Broker::shared();
        [$user, $course, $other] = [Ids::hex(), Ids::hex(), Ids::hex()];
        $env = [
            'PATH' => (string) getenv('PATH'),
            'STELLWERK_URL' => $broker->url,
            'STELLWERK_WS_URL' => str_replace('http://', 'ws://', $broker->url) . '/ws',
            'STELLWERK_API_KEY' => $broker->apiKey,
            'STELLWERK_JWT_SECRET' => (string) $broker->jwtSecret,
        ];
        $proc = proc_open(
            ['timeout', '60', PHP_BINARY, __DIR__ . '/studip-smoke.php', $user, $course, $other],
            [0 => ['file', '/dev/null', 'r'], 1 => ['pipe', 'w'], 2 => ['pipe', 'w']],
            $pipes,
            null,
            $env
        );
        $this->assertIsResource($proc);
        $stdout = (string) stream_get_contents($pipes[1]);
        $stderr = (string) stream_get_contents($pipes[2]);
        fclose($pipes[1]);
        fclose($pipes[2]);
        $this->assertSame(0, proc_close($proc), $stderr);
        $this->assertSame('', $stderr);
        $seen = json_decode($stdout, true);
        $this->assertIsArray($seen, $stdout);

        $this->assertSame(['ForumAfterInsert', 'StudipNewsDidCreate', 'BlubberCommentDidCreate'], $seen['observed']);
        $this->assertSame(['https://studip.example.org/plugins_packages/stellwerk/Stellwerk/assets/stellwerk.js'], $seen['scripts']);
        $this->assertCount(1, $seen['head']);
        [$element, , $script] = $seen['head'][0];
        $this->assertSame('script', $element);
        $this->assertStringContainsString('"url":"' . $env['STELLWERK_WS_URL'] . '"', $script);
        $this->assertStringContainsString('"courseChannelPrefix":"course:' . $course . ':"', $script);
        $this->assertStringContainsString('plugins.php\/stellwerkplugin\/token', str_replace('/', '\/', $script));
        $this->assertSame([$user], $seen['queries'][0][1]);

        // The token route's token is accepted for the user's course, as a tutor (staff).
        $token = $seen['token']['token'];
        $this->assertSame(3600, $seen['token']['expires_in']);
        $stream = SseStream::open($broker->url, ["course:$course:forum"], $token);
        $this->assertSame(200, $stream->status());
        $stream->next('subscribed');
        $stream->close();

        // What the notifications published (sent when the "request" ended).
        $client = new Client($broker->url, $broker->apiKey);
        $this->assertSame(
            [['type' => 'forum.entry.created', 'id' => 'topic1', 'course_id' => $course, 'author' => $user]],
            array_column($client->history("course:$course:forum")['messages'], 'data')
        );
        $this->assertSame(
            [['type' => 'news.created', 'id' => 'news1']],
            array_column($client->history("course:$course:news")['messages'], 'data')
        );
        $this->assertSame(
            [['type' => 'blubber.comment.created', 'id' => 'comment1', 'thread_id' => 'thread1']],
            array_column($client->history("user:$other")['messages'], 'data')
        );
    }
}
