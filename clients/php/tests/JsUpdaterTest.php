<?php

namespace Stellwerk\Tests;

use PHPUnit\Framework\TestCase;
use Stellwerk\Client;
use Stellwerk\JsUpdater;
use Stellwerk\TokenFactory;
use Stellwerk\Tests\Support\Broker;
use Stellwerk\Tests\Support\Ids;
use Stellwerk\Tests\Support\SseStream;

/** JsUpdater::push: `{"index", "data"}` on every user's channel, in one publishMany. */
final class JsUpdaterTest extends TestCase
{
    protected function tearDown(): void
    {
        JsUpdater::setClient(null);
    }

    public function testPushReachesEachUsersChannelWithIndexAndData(): void
    {
        $broker = Broker::shared();
        $tokens = new TokenFactory((string) $broker->jwtSecret);
        [$ada, $bob] = [Ids::hex(), Ids::hex()];
        $streams = [];
        foreach ([$ada, $bob] as $user) {
            $streams[$user] = SseStream::open($broker->url, ["user:$user"], $tokens->forUser($user, 'autor', [], 600));
            $this->assertSame(200, $streams[$user]->status());
            $streams[$user]->next('subscribed');
        }
        JsUpdater::setClient(new Client($broker->url, $broker->apiKey));

        $results = JsUpdater::push([$ada, $bob, $ada], 'messages', ['unread' => 3, 'ids' => ['m1']]);

        $this->assertSame(["user:$ada", "user:$bob"], array_column($results, 'channel'), 'one result per distinct user');
        foreach ($streams as $user => $stream) {
            $push = $stream->next('message')['data'];
            $this->assertSame("user:$user", $push['channel']);
            $this->assertSame(['index' => 'messages', 'data' => ['unread' => 3, 'ids' => ['m1']]], $push['data']);
        }
    }

    public function testAnExplicitClientWinsAndChannelsCanBeAnything(): void
    {
        $broker = Broker::shared();
        $client = new Client($broker->url, $broker->apiKey);
        $course = Ids::hex();

        $results = JsUpdater::pushToChannels(["course:$course:jsupdater"], 'Blubber.getNewPosts', null, $client);

        $history = $client->history("course:$course:jsupdater");
        $this->assertSame($results[0]['offset'], $history['messages'][0]['offset']);
        $this->assertSame(['index' => 'Blubber.getNewPosts', 'data' => null], $history['messages'][0]['data']);
    }

    public function testNobodyToPushToSendsNothingAndNoClientIsAnError(): void
    {
        $client = new Client('http://127.0.0.1:1', 'key');  // would fail if it were called
        $this->assertSame([], JsUpdater::push([], 'messages', 1, $client));
        $this->assertNull(JsUpdater::client());

        $this->expectException(\LogicException::class);
        JsUpdater::push(['u'], 'messages', 1);
    }

    public function testAFireAndForgetClientQueuesThePush(): void
    {
        $broker = Broker::shared();
        $client = new Client($broker->url, $broker->apiKey);
        $later = $client->withFireAndForget();
        JsUpdater::setClient($later);
        $user = Ids::hex();

        $this->assertNull(JsUpdater::push([$user], 'notifications', ['n' => 1]));
        $this->assertSame(1, $later->flush());
        $this->assertSame(['index' => 'notifications', 'data' => ['n' => 1]], $client->history("user:$user")['messages'][0]['data']);
    }
}
