<?php

namespace Stellwerk\Tests;

use PHPUnit\Framework\TestCase;
use Stellwerk\TokenFactory;
use Stellwerk\Tests\Support\Broker;
use Stellwerk\Tests\Support\Ids;
use Stellwerk\Tests\Support\SseStream;

/** Tokens: exactly the claims the plugins read, and accepted by the real broker (HS256, RS256). */
final class TokenFactoryTest extends TestCase
{
    private const NOW = 1767225600;

    /** @var Broker|null RS256 broker, started once for this class */
    private static $rsBroker;
    /** @var string */
    private static $rsPrivateKey = '';
    /** @var string */
    private static $rsKeyFile = '';

    public static function tearDownAfterClass(): void
    {
        if (self::$rsBroker !== null) {
            self::$rsBroker->stop();
            self::$rsBroker = null;
        }
        if (self::$rsKeyFile !== '' && is_file(self::$rsKeyFile)) {
            unlink(self::$rsKeyFile);
        }
    }

    /** @return array{0: array<string, mixed>, 1: array<string, mixed>, 2: string} header, claims, signing input */
    private static function decode(string $jwt): array
    {
        $parts = explode('.', $jwt);
        self::assertCount(3, $parts, $jwt);
        $json = static function (string $part) {
            return json_decode(base64_decode(strtr($part, '-_', '+/')), true, 512, JSON_THROW_ON_ERROR);
        };
        return [$json($parts[0]), $json($parts[1]), $parts[0] . '.' . $parts[1]];
    }

    private static function fixedClock(): callable
    {
        return static function (): int {
            return self::NOW;
        };
    }

    public function testForUserWritesExactlyTheClaimsThePluginsRead(): void
    {
        $tokens = new TokenFactory('s3cret', ['clock' => self::fixedClock()]);
        $course = 'a07535cf2f8a72df33c12ddfa4b53dde';

        $jwt = $tokens->forUser('e7a0a84b161f3e8c09b4a0a2e8a58147', 'autor', [$course => 'tutor'], 900);

        [$header, $claims, $input] = self::decode($jwt);
        $this->assertSame(['alg' => 'HS256', 'typ' => 'JWT'], $header);
        $this->assertSame([
            'sub' => 'e7a0a84b161f3e8c09b4a0a2e8a58147',
            'perm' => 'autor',
            'courses' => [$course => 'tutor'],
            'iat' => self::NOW,
            'exp' => self::NOW + 900,
        ], $claims);
        $signature = rtrim(strtr(base64_encode(hash_hmac('sha256', $input, 's3cret', true)), '+/', '-_'), '=');
        $this->assertSame($input . '.' . $signature, $jwt);
        $this->assertSame('HS256', $tokens->algorithm());
    }

    public function testCoursesAreAlwaysAJsonObject(): void
    {
        $tokens = new TokenFactory('s3cret');
        $this->assertStringContainsString('"courses":{}', self::payloadJson($tokens->forUser('u', 'user', [], 60)));
        // A key PHP turns into an integer would otherwise make a JSON list.
        $this->assertStringContainsString('"courses":{"0":"autor"}', self::payloadJson($tokens->forUser('u', 'user', ['0' => 'autor'], 60)));
    }

    private static function payloadJson(string $jwt): string
    {
        return base64_decode(strtr(explode('.', $jwt)[1], '-_', '+/'));
    }

    public function testExtraClaimsIssuerAudienceAndKid(): void
    {
        $tokens = new TokenFactory('s3cret', [
            'issuer' => 'https://studip.example.org',
            'audience' => 'stellwerk',
            'kid' => '2026-12',
            'clock' => self::fixedClock(),
        ]);
        [$header, $claims] = self::decode($tokens->forUser('u', 'dozent', [], 60, ['name' => 'Ada Lovelace']));
        $this->assertSame('2026-12', $header['kid']);
        $this->assertSame('https://studip.example.org', $claims['iss']);
        $this->assertSame('stellwerk', $claims['aud']);
        $this->assertSame('Ada Lovelace', $claims['name']);

        [, $claims] = self::decode($tokens->forChannels('u', ['course:abc:chat', 'user:u'], 60));
        $this->assertSame(['course:abc:chat', 'user:u'], $claims['channels']);
        $this->assertSame(self::NOW + 60, $claims['exp']);
    }

    public function testRefusesWhatStudIpWouldNeverMean(): void
    {
        $tokens = new TokenFactory('s3cret');
        $cases = [
            'unknown perm' => function () use ($tokens) {
                $tokens->forUser('u', 'superuser', [], 60);
            },
            'unknown status' => function () use ($tokens) {
                $tokens->forUser('u', 'autor', ['c' => 'accepted'], 60);
            },
            'replacing sub' => function () use ($tokens) {
                $tokens->forUser('u', 'autor', [], 60, ['sub' => 'root']);
            },
            'empty sub' => function () use ($tokens) {
                $tokens->forUser('', 'autor', [], 60);
            },
            'no lifetime' => function () use ($tokens) {
                $tokens->forUser('u', 'autor', [], 0);
            },
            'empty secret' => function () {
                new TokenFactory('');
            },
            'unknown option' => function () {
                new TokenFactory('s', ['issuer' => 'x', 'audiance' => 'y']);
            },
        ];
        foreach ($cases as $name => $case) {
            try {
                $case();
                $this->fail("$name: no exception");
            } catch (\InvalidArgumentException $e) {
                $this->assertNotSame('', $e->getMessage(), $name);
            }
        }
    }

    /** Opens an SSE stream with `$token` and returns its status (after `subscribed` for 200). */
    private static function sse(Broker $broker, string $channel, string $token): int
    {
        $stream = SseStream::open($broker->url, [$channel], $token);
        if ($stream->status() === 200) {
            $event = $stream->next('subscribed')['data'];
            self::assertSame($channel, $event['channel']);
        }
        $stream->close();
        return $stream->status();
    }

    public function testHs256TokensAreAcceptedByTheBrokerAsThePluginsExpect(): void
    {
        $broker = Broker::shared();
        $tokens = new TokenFactory((string) $broker->jwtSecret);
        [$course, $other, $user] = [Ids::hex(), Ids::hex(), Ids::hex()];
        $member = $tokens->forUser($user, 'autor', [$course => 'autor'], 600);

        $this->assertSame(200, self::sse($broker, "course:$course:chat", $member), 'course member');
        $this->assertSame(403, self::sse($broker, "course:$other:chat", $member), 'not a member of that course');
        $this->assertSame(200, self::sse($broker, "user:$user", $member), 'own user channel');
        $this->assertSame(403, self::sse($broker, 'user:' . Ids::hex(), $member), "another user's channel");
        $admin = $tokens->forUser(Ids::hex(), 'admin', [], 600);
        $this->assertSame(200, self::sse($broker, "course:$other:chat", $admin), 'admin enters every course');

        $foreign = (new TokenFactory('another-secret-of-32-bytes-at-least'))->forUser($user, 'autor', [$course => 'autor'], 600);
        $this->assertSame(401, self::sse($broker, "course:$course:chat", $foreign), 'signed with another secret');
        $expired = (new TokenFactory((string) $broker->jwtSecret, ['clock' => static function (): int {
            return time() - 7200;
        }]))->forUser($user, 'autor', [$course => 'autor'], 600);
        $this->assertSame(401, self::sse($broker, "course:$course:chat", $expired), 'expired');
    }

    /** A broker that verifies RS256 with a public key file and requires iss and aud. */
    private static function rsBroker(): Broker
    {
        if (self::$rsBroker === null) {
            $key = openssl_pkey_new(['private_key_bits' => 2048, 'private_key_type' => OPENSSL_KEYTYPE_RSA]);
            self::assertNotFalse($key);
            self::assertTrue(openssl_pkey_export($key, $pem));
            self::$rsPrivateKey = $pem;
            self::$rsKeyFile = (string) tempnam(sys_get_temp_dir(), 'stellwerk-php-rs256-');
            file_put_contents(self::$rsKeyFile, openssl_pkey_get_details($key)['key']);
            self::$rsBroker = Broker::start([
                'STELLWERK_JWT_PUBLIC_KEY_FILE' => self::$rsKeyFile,
                'STELLWERK_JWT_ISSUER' => 'https://studip.example.org',
                'STELLWERK_JWT_AUDIENCE' => 'stellwerk',
            ], ['STELLWERK_JWT_SECRET']);
        }
        return self::$rsBroker;
    }

    /** @requires extension openssl */
    public function testRs256TokensAreAcceptedByABrokerWithThePublicKey(): void
    {
        $broker = self::rsBroker();
        $tokens = TokenFactory::rs256(self::$rsPrivateKey, null, [
            'issuer' => 'https://studip.example.org',
            'audience' => 'stellwerk',
        ]);
        $this->assertSame('RS256', $tokens->algorithm());
        [$course, $user] = [Ids::hex(), Ids::hex()];

        $token = $tokens->forUser($user, 'tutor', [$course => 'dozent'], 600, ['name' => 'Grace']);
        $this->assertSame('RS256', self::decode($token)[0]['alg']);
        $this->assertSame(200, self::sse($broker, "course:$course:news", $token));
        $this->assertSame(200, self::sse($broker, "user:$user", $token));

        $withoutIssuer = TokenFactory::rs256(self::$rsPrivateKey, null, ['audience' => 'stellwerk'])
            ->forUser($user, 'tutor', [$course => 'dozent'], 600);
        $this->assertSame(401, self::sse($broker, "course:$course:news", $withoutIssuer), 'iss required');
        $hs256 = (new TokenFactory('some-secret', ['issuer' => 'https://studip.example.org', 'audience' => 'stellwerk']))
            ->forUser($user, 'tutor', [$course => 'dozent'], 600);
        $this->assertSame(401, self::sse($broker, "course:$course:news", $hs256), 'no algorithm confusion');
    }

    /** @requires extension openssl */
    public function testRs256TakesAnEncryptedKeyFileAndRefusesOtherKeys(): void
    {
        $broker = self::rsBroker();
        $key = openssl_pkey_get_private(self::$rsPrivateKey);
        $this->assertTrue(openssl_pkey_export($key, $encrypted, 'pass phrase'));
        $file = (string) tempnam(sys_get_temp_dir(), 'stellwerk-php-key-');
        file_put_contents($file, $encrypted);
        try {
            $tokens = TokenFactory::rs256('file://' . $file, 'pass phrase', [
                'issuer' => 'https://studip.example.org',
                'audience' => ['stellwerk', 'other'],
            ]);
            $course = Ids::hex();
            $this->assertSame(200, self::sse($broker, "course:$course:chat", $tokens->forUser(Ids::hex(), 'autor', [$course => 'user'], 600)));
        } finally {
            unlink($file);
        }

        $ec = openssl_pkey_new(['private_key_type' => OPENSSL_KEYTYPE_EC, 'curve_name' => 'prime256v1']);
        $this->assertTrue(openssl_pkey_export($ec, $ecPem));
        foreach (['EC key' => $ecPem, 'garbage' => 'not a key', 'wrong pass phrase' => $encrypted] as $name => $pem) {
            try {
                TokenFactory::rs256($pem);
                $this->fail("$name accepted");
            } catch (\InvalidArgumentException $e) {
                $this->assertNotSame('', $e->getMessage());
            }
        }
    }
}
