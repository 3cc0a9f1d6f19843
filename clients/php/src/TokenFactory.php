<?php

namespace Stellwerk;

/**
 * Mints the JWTs browsers connect with, as Stud.IP's PHP does for the logged-in user.
 *
 * ```php
 * $tokens = new \Stellwerk\TokenFactory($secret);                 // HS256, jwt.secret
 * $tokens = \Stellwerk\TokenFactory::rs256($privateKeyPem);       // RS256, jwt.public_key_file
 * $jwt = $tokens->forUser($user_id, 'autor', [$course_id => 'tutor'], 3600);
 * ```
 *
 * forUser() writes exactly the claims the example plugins read: `sub` (the Stud.IP user id;
 * the `user` plugin lets it subscribe to `user:<sub>`), `perm` (the global permission) and
 * `courses` (course id → status; the `course` plugin's membership check), plus `exp` and
 * `iat`. Options add `iss` / `aud` where the broker checks them (`jwt.issuer`,
 * `jwt.audience`) and a `kid` header where it selects keys by id (`[[jwt.keys]]`).
 *
 * Only `sub` and `exp` are required by the broker; every claim reaches the plugins.
 */
final class TokenFactory
{
    /** Global permissions of Stud.IP, lowest first. */
    public const PERMS = ['user', 'autor', 'tutor', 'dozent', 'admin', 'root'];

    /** Course statuses of Stud.IP (`seminar_user.status`), lowest first. */
    public const COURSE_STATUSES = ['user', 'autor', 'tutor', 'dozent'];

    private const OPTIONS = ['issuer', 'audience', 'kid', 'clock'];

    /** @var string `HS256` or `RS256` */
    private $algorithm;
    /** @var string HS256 secret, or PEM of the RSA private key */
    private $key;
    /** @var string|null */
    private $passphrase;
    /** @var string|null */
    private $issuer;
    /** @var string|list<string>|null */
    private $audience;
    /** @var string|null */
    private $kid;
    /** @var callable(): int */
    private $clock;

    /**
     * HS256 with the broker's shared secret (`jwt.secret`, `STELLWERK_JWT_SECRET`).
     *
     * @param array<string, mixed> $options `issuer` (string → `iss`), `audience` (string or
     *        list → `aud`), `kid` (string → header `kid`), `clock` (callable returning Unix
     *        seconds; for tests)
     */
    public function __construct(string $secret, array $options = [])
    {
        if ($secret === '') {
            throw new \InvalidArgumentException('JWT secret is empty');
        }
        $this->init('HS256', $secret, null, $options);
    }

    /**
     * RS256 with an RSA private key (PEM text, or a `file://` path); the broker holds the
     * public key (`jwt.public_key_file`). Needs ext-openssl.
     *
     * @param array<string, mixed> $options as for the constructor
     */
    public static function rs256(string $privateKeyPem, ?string $passphrase = null, array $options = []): self
    {
        if (!extension_loaded('openssl')) {
            throw new \LogicException('RS256 tokens need the openssl extension (ext-openssl)');
        }
        $key = openssl_pkey_get_private($privateKeyPem, $passphrase ?? '');
        if ($key === false) {
            throw new \InvalidArgumentException('not a readable private key: ' . self::opensslErrors());
        }
        $details = openssl_pkey_get_details($key);
        if ($details === false || $details['type'] !== OPENSSL_KEYTYPE_RSA) {
            throw new \InvalidArgumentException('RS256 needs an RSA private key');
        }
        if ($details['bits'] < 2048) {
            throw new \InvalidArgumentException('RSA keys shorter than 2048 bits are refused');
        }
        $factory = (new \ReflectionClass(self::class))->newInstanceWithoutConstructor();
        $factory->init('RS256', $privateKeyPem, $passphrase, $options);
        return $factory;
    }

    /** `HS256` or `RS256`. */
    public function algorithm(): string
    {
        return $this->algorithm;
    }

    /**
     * A token for a Stud.IP user, valid for `$ttlSeconds`.
     *
     * @param string $userId   the Stud.IP user id (`sub`)
     * @param string $perm     global permission: user, autor, tutor, dozent, admin or root
     * @param array<string, string> $courses course id (`seminar_id`) → status in the course
     *                         (user, autor, tutor, dozent); always encoded as a JSON object
     * @param int    $ttlSeconds lifetime; the browser refreshes before `exp`
     * @param array<string, mixed> $extraClaims more claims, e.g. `['name' => 'Ada Lovelace']`
     *                         (the `course` plugin shows it in presence) or `['channels' =>
     *                         […]]`; they cannot replace sub, perm, courses, exp or iat
     */
    public function forUser(string $userId, string $perm, array $courses, int $ttlSeconds = 3600, array $extraClaims = []): string
    {
        if (!in_array($perm, self::PERMS, true)) {
            throw new \InvalidArgumentException(
                "perm must be one of " . implode(', ', self::PERMS) . ", got '$perm'"
            );
        }
        foreach ($courses as $courseId => $status) {
            if (!is_string($status) || !in_array($status, self::COURSE_STATUSES, true)) {
                throw new \InvalidArgumentException(
                    "status in course $courseId must be one of " . implode(', ', self::COURSE_STATUSES)
                );
            }
        }
        $reserved = array_intersect(array_keys($extraClaims), ['sub', 'perm', 'courses', 'exp', 'iat']);
        if ($reserved !== []) {
            throw new \InvalidArgumentException('extra claims cannot replace ' . implode(', ', $reserved));
        }
        return $this->mint(
            ['sub' => $userId, 'perm' => $perm, 'courses' => (object) $courses] + $extraClaims,
            $ttlSeconds
        );
    }

    /**
     * A token for a page that may subscribe to exactly `$channels` (the `channels` claim, for
     * rules too complex for `courses`, read by your own plugin), plus any other claims.
     *
     * @param list<string> $channels
     * @param array<string, mixed> $extraClaims
     */
    public function forChannels(string $userId, array $channels, int $ttlSeconds = 3600, array $extraClaims = []): string
    {
        foreach ($channels as $channel) {
            if (!is_string($channel) || $channel === '') {
                throw new \InvalidArgumentException('channels must be non-empty strings');
            }
        }
        return $this->mint(['sub' => $userId, 'channels' => array_values($channels)] + $extraClaims, $ttlSeconds);
    }

    /**
     * Any claims: adds `iat`, `exp` (now + ttl), and `iss` / `aud` when configured (claims
     * given here win), then signs.
     *
     * @param array<string, mixed> $claims must hold a non-empty string `sub`
     */
    public function mint(array $claims, int $ttlSeconds = 3600): string
    {
        if (!isset($claims['sub']) || !is_string($claims['sub']) || $claims['sub'] === '') {
            throw new \InvalidArgumentException('a token needs a non-empty string sub (the Stud.IP user id)');
        }
        if ($ttlSeconds <= 0) {
            throw new \InvalidArgumentException('ttlSeconds must be positive');
        }
        $now = ($this->clock)();
        $standard = ['iat' => $now, 'exp' => $now + $ttlSeconds];
        if ($this->issuer !== null) {
            $standard['iss'] = $this->issuer;
        }
        if ($this->audience !== null) {
            $standard['aud'] = $this->audience;
        }
        return $this->sign($claims + $standard);
    }

    /**
     * Signs exactly these claims (no `exp` added: the broker refuses tokens without one).
     *
     * @param array<string, mixed> $claims
     */
    public function sign(array $claims): string
    {
        $header = ['alg' => $this->algorithm, 'typ' => 'JWT'];
        if ($this->kid !== null) {
            $header['kid'] = $this->kid;
        }
        $input = self::base64url(self::json($header)) . '.' . self::base64url(self::json($claims));
        return $input . '.' . self::base64url($this->signature($input));
    }

    // ---------------------------------------------------------------------------------------

    /** @param array<string, mixed> $options */
    private function init(string $algorithm, string $key, ?string $passphrase, array $options): void
    {
        $unknown = array_diff(array_keys($options), self::OPTIONS);
        if ($unknown !== []) {
            throw new \InvalidArgumentException('unknown TokenFactory option(s): ' . implode(', ', $unknown));
        }
        $this->algorithm = $algorithm;
        $this->key = $key;
        $this->passphrase = $passphrase;
        $this->issuer = isset($options['issuer']) ? (string) $options['issuer'] : null;
        $audience = $options['audience'] ?? null;
        if ($audience !== null && !is_string($audience) && !is_array($audience)) {
            throw new \InvalidArgumentException('audience must be a string or a list of strings');
        }
        $this->audience = is_array($audience) ? array_values($audience) : $audience;
        $this->kid = isset($options['kid']) ? (string) $options['kid'] : null;
        $clock = $options['clock'] ?? null;
        if ($clock !== null && !is_callable($clock)) {
            throw new \InvalidArgumentException('clock must be callable');
        }
        $this->clock = $clock ?? static function (): int {
            return time();
        };
    }

    private function signature(string $input): string
    {
        if ($this->algorithm === 'HS256') {
            return hash_hmac('sha256', $input, $this->key, true);
        }
        $key = openssl_pkey_get_private($this->key, $this->passphrase ?? '');
        if ($key === false || !openssl_sign($input, $signature, $key, OPENSSL_ALGO_SHA256)) {
            throw new \RuntimeException('RS256 signing failed: ' . self::opensslErrors());
        }
        return $signature;
    }

    /** @param mixed $value */
    private static function json($value): string
    {
        try {
            return json_encode($value, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_THROW_ON_ERROR);
        } catch (\JsonException $e) {
            throw new \InvalidArgumentException('claims cannot be encoded as JSON: ' . $e->getMessage(), 0, $e);
        }
    }

    private static function base64url(string $bytes): string
    {
        return rtrim(strtr(base64_encode($bytes), '+/', '-_'), '=');
    }

    private static function opensslErrors(): string
    {
        $errors = [];
        while (($error = openssl_error_string()) !== false && count($errors) < 10) {
            $errors[] = $error;
        }
        return $errors === [] ? 'unknown openssl error' : implode('; ', $errors);
    }
}
