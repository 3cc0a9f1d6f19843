<?php

namespace StellwerkStudip\Tests;

use PHPUnit\Framework\TestCase;
use Stellwerk\Client;
use Stellwerk\TokenFactory;
use Stellwerk\Tests\Support\Broker;
use Stellwerk\Tests\Support\Ids;
use Stellwerk\Tests\Support\SseStream;
use StellwerkStudip\Notifications;
use StellwerkStudip\Publication;

/** What gets published for each notification, and that a course member receives it. */
final class NotificationsTest extends TestCase
{
    private const COURSE = 'a07535cf2f8a72df33c12ddfa4b53dde';
    private const ADA = 'e7a0a84b161f3e8c09b4a0a2e8a58147';
    private const BOB = '76ed43ef286fb55cf9e41beadb484a9f';

    public function testAForumEntryGoesToTheCoursesForumChannel(): void
    {
        $entry = ['topic_id' => 'f1e2d3c4b5a697887766554433221100', 'seminar_id' => self::COURSE, 'user_id' => self::ADA, 'anonymous' => 0, 'content' => 'secret text'];
        $publication = Notifications::forumEntryCreated($entry);
        $this->assertSame(['course:' . self::COURSE . ':forum'], $publication->channels);
        $this->assertSame(
            ['type' => 'forum.entry.created', 'id' => $entry['topic_id'], 'course_id' => self::COURSE, 'author' => self::ADA],
            $publication->data,
            'ids and a type, never the content'
        );

        $anonymous = Notifications::forumEntryCreated(['anonymous' => 1] + $entry);
        $this->assertArrayNotHasKey('author', $anonymous->data, 'an anonymous posting stays anonymous');
        $this->assertNull(Notifications::forumEntryCreated(['seminar_id' => 'x'] + $entry));
        $this->assertNull(Notifications::forumEntryCreated([]));
    }

    public function testNewsGoToTheirCoursesAndTheStartPage(): void
    {
        $now = 1767225600;
        $ranges = [self::COURSE => 'sem', 'studip' => 'global', self::ADA => 'user', 'i1' => 'inst'];
        $publication = Notifications::newsCreated('n1', $ranges, $now - 5, $now);
        $this->assertSame(['course:' . self::COURSE . ':news', 'public:news'], $publication->channels);
        $this->assertSame(['type' => 'news.created', 'id' => 'n1'], $publication->data);

        $this->assertNull(Notifications::newsCreated('n1', $ranges, $now + 3600, $now), 'not visible yet');
        $this->assertNull(Notifications::newsCreated('n1', [self::ADA => 'user'], $now, $now), 'profile news have no channel');
    }

    public function testBlubberCommentsGoWhereTheThreadLives(): void
    {
        $course = Notifications::blubberCommentCreated('c1', 't1', 'course', self::COURSE, self::ADA);
        $this->assertSame(['course:' . self::COURSE . ':blubber'], $course->channels);
        $this->assertSame(['type' => 'blubber.comment.created', 'id' => 'c1', 'thread_id' => 't1'], $course->data);

        $this->assertSame(['public:blubber'], Notifications::blubberCommentCreated('c1', 'global', 'public', '', self::ADA)->channels);

        $private = Notifications::blubberCommentCreated('c1', 't2', 'private', '', self::ADA, [self::ADA, self::BOB, self::BOB]);
        $this->assertSame(['user:' . self::BOB], $private->channels, 'each participant but the author, once');
        $this->assertNull(Notifications::blubberCommentCreated('c1', 't2', 'private', '', self::ADA, [self::ADA]));
        $this->assertNull(Notifications::blubberCommentCreated('c1', 't3', 'institute', 'x', self::ADA));
    }

    public function testEveryPublicationIsAcceptedByTheBrokerAndReachesAMember(): void
    {
        $broker = Broker::shared();
        $client = new Client($broker->url, $broker->apiKey);
        $course = Ids::hex();
        $tokens = new TokenFactory((string) $broker->jwtSecret);
        $token = $tokens->forUser(self::BOB, 'autor', [$course => 'autor'], 600);
        $stream = SseStream::open($broker->url, ["course:$course:forum", "course:$course:news", "course:$course:blubber", 'user:' . self::BOB], $token);
        $this->assertSame(200, $stream->status());

        $publications = [
            Notifications::forumEntryCreated(['topic_id' => Ids::hex(), 'seminar_id' => $course, 'user_id' => self::ADA]),
            Notifications::newsCreated(Ids::hex(), [$course => 'sem', 'studip' => 'global'], 0, 1),
            Notifications::blubberCommentCreated(Ids::hex(), Ids::hex(), 'course', $course, self::ADA),
            Notifications::blubberCommentCreated(Ids::hex(), Ids::hex(), 'private', '', self::ADA, [self::BOB]),
        ];
        foreach ($publications as $publication) {
            $this->assertInstanceOf(Publication::class, $publication);
            $client->publishMany($publication->channels, $publication->data);
            $push = $stream->next('message')['data'];
            $this->assertContains($push['channel'], $publication->channels);
            $this->assertSame($publication->data, $push['data']);
        }
    }
}
