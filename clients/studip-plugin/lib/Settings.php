<?php

namespace StellwerkStudip;

use Stellwerk\Client;
use Stellwerk\TokenFactory;

/**
 * The plugin's settings: from `config.php` in the plugin directory (an array, see
 * config.example.php), each overridable by an environment variable.
 *
 * | key               | variable                        |                                                    |
 * |-------------------|---------------------------------|----------------------------------------------------|
 * | api_url           | STELLWERK_URL                   | the broker as Stud.IP's server reaches it          |
 * | ws_url            | STELLWERK_WS_URL                | the broker's `/ws` as browsers reach it            |
 * | api_key           | STELLWERK_API_KEY               | the broker's `api_key`                             |
 * | jwt_secret        | STELLWERK_JWT_SECRET            | HS256 (the broker's `jwt.secret`), or:             |
 * | jwt_private_key   | STELLWERK_JWT_PRIVATE_KEY_FILE  | RS256 key file (broker: `jwt.public_key_file`)     |
 * | jwt_issuer        | STELLWERK_JWT_ISSUER            | when the broker sets `jwt.issuer`                  |
 * | jwt_audience      | STELLWERK_JWT_AUDIENCE          | when the broker sets `jwt.audience`                |
 * | token_ttl         | STELLWERK_TOKEN_TTL             | seconds, default 3600                              |
 * | script_url        | STELLWERK_SCRIPT_URL            | stellwerk.js; default: the plugin's assets/        |
 */
final class Settings
{
    private const VARIABLES = [
        'api_url' => 'STELLWERK_URL',
        'ws_url' => 'STELLWERK_WS_URL',
        'api_key' => 'STELLWERK_API_KEY',
        'jwt_secret' => 'STELLWERK_JWT_SECRET',
        'jwt_private_key' => 'STELLWERK_JWT_PRIVATE_KEY_FILE',
        'jwt_issuer' => 'STELLWERK_JWT_ISSUER',
        'jwt_audience' => 'STELLWERK_JWT_AUDIENCE',
        'token_ttl' => 'STELLWERK_TOKEN_TTL',
        'script_url' => 'STELLWERK_SCRIPT_URL',
    ];

    /** @var array<string, string> */
    private $values;

    /** @param array<string, mixed> $values */
    public function __construct(array $values)
    {
        $unknown = array_diff(array_keys($values), array_keys(self::VARIABLES));
        if ($unknown !== []) {
            throw new \InvalidArgumentException('unknown Stellwerk plugin setting(s): ' . implode(', ', $unknown));
        }
        $this->values = array_map('strval', array_filter($values, static function ($v): bool {
            return $v !== null && $v !== '';
        }));
    }

    /**
     * `config.php` (if it exists) overridden by the environment.
     *
     * @param callable(string): (string|false) $getenv
     */
    public static function load(string $file, ?callable $getenv = null): self
    {
        $values = is_file($file) ? require $file : [];
        if (!is_array($values)) {
            throw new \UnexpectedValueException("$file must return an array");
        }
        $getenv = $getenv ?? 'getenv';
        foreach (self::VARIABLES as $key => $variable) {
            $value = $getenv($variable);
            if (is_string($value) && $value !== '') {
                $values[$key] = $value;
            }
        }
        return new self($values);
    }

    /** Everything needed to publish and to mint tokens is there. */
    public function complete(): bool
    {
        return isset($this->values['api_url'], $this->values['ws_url'], $this->values['api_key'])
            && (isset($this->values['jwt_secret']) || isset($this->values['jwt_private_key']));
    }

    public function get(string $key): ?string
    {
        return $this->values[$key] ?? null;
    }

    /** @param array<string, mixed> $options Client options (`fire_and_forget`, timeouts) */
    public function client(array $options = []): Client
    {
        return new Client((string) $this->get('api_url'), (string) $this->get('api_key'), $options);
    }

    public function tokens(): TokenFactory
    {
        $options = [];
        if ($this->get('jwt_issuer') !== null) {
            $options['issuer'] = $this->get('jwt_issuer');
        }
        if ($this->get('jwt_audience') !== null) {
            $options['audience'] = $this->get('jwt_audience');
        }
        $keyFile = $this->get('jwt_private_key');
        if ($keyFile !== null) {
            return TokenFactory::rs256('file://' . $keyFile, null, $options);
        }
        return new TokenFactory((string) $this->get('jwt_secret'), $options);
    }

    public function userToken(): UserToken
    {
        $ttl = (int) ($this->get('token_ttl') ?? 3600);
        return new UserToken($this->tokens(), $ttl > 0 ? $ttl : 3600);
    }
}
