<?php

namespace StellwerkStudip\Tests;

use PHPUnit\Framework\TestCase;
use Stellwerk\Client;
use Stellwerk\TokenFactory;
use Stellwerk\Tests\Support\Broker;
use Stellwerk\Tests\Support\Ids;
use Stellwerk\Tests\Support\SseStream;
use StellwerkStudip\UserToken;

/** Claims from `seminar_user` rows, and the minted token against the real broker's `course` plugin. */
final class UserTokenTest extends TestCase
{
    private const A = 'a07535cf2f8a72df33c12ddfa4b53dde';
    private const B = '5b7e2c1d9f0a4e3b8c6d1a2f3e4b5c6d';

    public function testMembershipRowsBecomeCourseIdToStatus(): void
    {
        $rows = [
            ['seminar_id' => self::A, 'status' => 'tutor'],
            (object) ['seminar_id' => self::B, 'status' => 'autor'],
            new \ArrayObject(['seminar_id' => 'c' . str_repeat('0', 31), 'status' => 'user']),
        ];
        $this->assertSame(
            [self::A => 'tutor', self::B => 'autor', 'c' . str_repeat('0', 31) => 'user'],
            UserToken::courses($rows, 100)
        );
    }

    public function testRowsThePluginWouldRefuseAreLeftOutAndDuplicatesKeepTheHigherStatus(): void
    {
        $rows = [
            ['seminar_id' => self::A, 'status' => 'autor'],
            ['seminar_id' => self::A, 'status' => 'dozent'],
            ['seminar_id' => self::A, 'status' => 'user'],
            ['seminar_id' => 'not-a-course', 'status' => 'autor'],
            ['seminar_id' => self::B, 'status' => 'accepted'],   // admission state, not a status
            ['seminar_id' => self::B],
            [],
        ];
        $this->assertSame([self::A => 'dozent'], UserToken::courses($rows, 100));
    }

    public function testOnlyTheFirstMaxCoursesGoIn(): void
    {
        $rows = [];
        for ($i = 0; $i < 10; $i++) {
            $rows[] = ['seminar_id' => sprintf('%032x', $i), 'status' => 'user'];
        }
        $courses = UserToken::courses($rows, 3);
        $this->assertSame([sprintf('%032x', 0), sprintf('%032x', 1), sprintf('%032x', 2)], array_keys($courses));
        $this->assertSame([], UserToken::courses($rows, 0));
    }

    public function testTheTokenCarriesPermCoursesAndName(): void
    {
        $userToken = new UserToken(new TokenFactory('s3cret'), 600);
        $jwt = $userToken->mint('e7a0a84b161f3e8c09b4a0a2e8a58147', 'dozent', [['seminar_id' => self::A, 'status' => 'dozent']], 'Ada Lovelace');
        $claims = json_decode(base64_decode(strtr(explode('.', $jwt)[1], '-_', '+/')), true);
        $this->assertSame('e7a0a84b161f3e8c09b4a0a2e8a58147', $claims['sub']);
        $this->assertSame('dozent', $claims['perm']);
        $this->assertSame([self::A => 'dozent'], $claims['courses']);
        $this->assertSame('Ada Lovelace', $claims['name']);
        $this->assertSame(600, $claims['exp'] - $claims['iat']);

        $this->expectException(\InvalidArgumentException::class);
        $userToken->mint('nobody', 'nobody', []);
    }

    public function testTheBrokerLetsTheUserIntoTheirCoursesOnlyAndShowsTheName(): void
    {
        $broker = Broker::shared();
        $userToken = new UserToken(new TokenFactory((string) $broker->jwtSecret), 600);
        [$mine, $other, $user] = [Ids::hex(), Ids::hex(), Ids::hex()];
        $token = $userToken->mint($user, 'autor', [['seminar_id' => $mine, 'status' => 'autor']], 'Ada Lovelace');

        $stream = SseStream::open($broker->url, ["course:$mine:chat"], $token);
        $this->assertSame(200, $stream->status());
        $stream->next('subscribed');
        $presence = (new Client($broker->url, $broker->apiKey))->presence("course:$mine:chat");
        $this->assertSame([['user' => $user, 'info' => ['name' => 'Ada Lovelace']]], $presence);

        $refused = SseStream::open($broker->url, ["course:$other:chat"], $token);
        $this->assertSame(403, $refused->status());
        $this->assertSame('forbidden', $refused->errorBody()['error']['code']);
    }
}
