<?php

namespace Stellwerk\Tests\Support;

/**
 * The real `stellwerk serve` on 127.0.0.1 (a free port), as the Rust e2e harness starts it:
 * only the STELLWERK_* variables the test sets, a random API key and JWT secret, readiness
 * from the log line `listening on http://…`.
 *
 * - STELLWERK_BIN: the binary (default ../../target/debug/stellwerk from clients/php);
 * - STELLWERK_PLUGINS_DIR: the example plugins (default ../../target/plugins).
 */
final class Broker
{
    private const STARTUP_SECONDS = 60;

    /** @var self|null */
    private static $shared;

    /** @var Process */
    private $process;
    /** @var string */
    public $url;
    /** @var string */
    public $apiKey;
    /** @var string|null the HS256 secret, null when the broker verifies with a public key */
    public $jwtSecret;

    /**
     * @param array<string, string> $env extra STELLWERK_* settings
     * @param list<string> $unset variables the harness sets by default but this broker must not get
     */
    public static function start(array $env = [], array $unset = []): self
    {
        return new self($env, $unset);
    }

    /** One broker with the default settings for every test that needs nothing special. */
    public static function shared(): self
    {
        if (self::$shared === null || !self::$shared->process->running()) {
            self::$shared = new self([], []);
        }
        return self::$shared;
    }

    /** @param array<string, string> $env @param list<string> $unset */
    private function __construct(array $env, array $unset)
    {
        $bin = self::path('STELLWERK_BIN', 'target/debug/stellwerk');
        $plugins = self::path('STELLWERK_PLUGINS_DIR', 'target/plugins');
        if (!is_file($bin) || !is_executable($bin)) {
            throw new \RuntimeException("no stellwerk binary at $bin: build it (cargo build) or set STELLWERK_BIN");
        }
        foreach (['public', 'course', 'user'] as $plugin) {
            if (!is_file("$plugins/$plugin.wasm")) {
                throw new \RuntimeException("$plugins/$plugin.wasm is missing: run `cargo xtask build-plugins` or set STELLWERK_PLUGINS_DIR");
            }
        }
        $this->apiKey = bin2hex(random_bytes(24));
        $this->jwtSecret = bin2hex(random_bytes(32));
        $vars = [
            'PATH' => (string) getenv('PATH'),
            'HOME' => (string) (getenv('HOME') ?: sys_get_temp_dir()),
            'RUST_LOG' => 'info',
            'NO_COLOR' => '1',
            'STELLWERK_LISTEN' => '127.0.0.1:0',
            'STELLWERK_API_KEY' => $this->apiKey,
            'STELLWERK_JWT_SECRET' => $this->jwtSecret,
            'STELLWERK_PLUGINS_DIR' => $plugins,
        ];
        // The cache `cargo xtask test` shares with the Rust tests' brokers (else the default).
        $cache = getenv('STELLWERK_PLUGINS_COMPILE_CACHE_DIR');
        if ($cache !== false && $cache !== '') {
            $vars['STELLWERK_PLUGINS_COMPILE_CACHE_DIR'] = $cache;
        }
        foreach ($env as $key => $value) {
            $vars[$key] = $value;
        }
        foreach ($unset as $key) {
            unset($vars[$key]);
        }
        if (!isset($vars['STELLWERK_JWT_SECRET'])) {
            $this->jwtSecret = null;
        }
        $this->process = new Process('stellwerk', [$bin, 'serve'], $vars);
        $m = $this->process->waitForLog('#listening on (http://127\.0\.0\.1:\d+)#', self::STARTUP_SECONDS);
        $this->url = $m[1];
    }

    public function __destruct()
    {
        $this->process->kill();
    }

    public function log(): string
    {
        return $this->process->log();
    }

    /** Kills the broker (SIGKILL, as the Rust harness does: no graceful wait for kept-alive connections). */
    public function stop(): void
    {
        $this->process->kill();
    }

    /** Env variable (relative to the working directory) or the default relative to the repository root. */
    private static function path(string $var, string $default): string
    {
        $value = getenv($var);
        if ($value !== false && $value !== '') {
            return $value[0] === '/' ? $value : getcwd() . '/' . $value;
        }
        return dirname(__DIR__, 4) . '/' . $default;
    }
}
