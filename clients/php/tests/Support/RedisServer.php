<?php

namespace Stellwerk\Tests\Support;

/** A real `redis-server` on a free port, no persistence; for the Redis engine's 503. */
final class RedisServer
{
    /** @var Process */
    private $process;
    /** @var int */
    public $port;
    /** @var string */
    private $dir;

    public function __construct()
    {
        $bin = getenv('REDIS_SERVER') ?: '/usr/bin/redis-server';
        if (!is_executable($bin)) {
            throw new \RuntimeException("no redis-server at $bin (Debian package redis-server, or set REDIS_SERVER)");
        }
        $this->port = Process::freePort();
        $this->dir = sys_get_temp_dir() . '/stellwerk-php-redis-' . getmypid() . '-' . $this->port;
        if (!is_dir($this->dir)) {
            mkdir($this->dir);
        }
        $this->process = new Process('redis-server', [
            $bin, '--bind', '127.0.0.1', '--port', (string) $this->port,
            '--save', '', '--appendonly', 'no', '--dir', $this->dir,
        ], ['PATH' => (string) getenv('PATH')]);
        for ($i = 0; $i < 200; $i++) {
            $socket = @stream_socket_client("tcp://127.0.0.1:{$this->port}", $errno, $errstr, 1.0);
            if ($socket !== false) {
                fclose($socket);
                return;
            }
            usleep(25000);
        }
        throw new \RuntimeException("redis-server did not listen on {$this->port}: " . $this->process->log());
    }

    public function url(): string
    {
        return "redis://127.0.0.1:{$this->port}/";
    }

    public function kill(): void
    {
        $this->process->kill();
    }

    public function __destruct()
    {
        $this->process->stop();
        @rmdir($this->dir);
    }
}
