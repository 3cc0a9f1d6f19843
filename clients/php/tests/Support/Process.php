<?php

namespace Stellwerk\Tests\Support;

/**
 * A child process (no shell: the pid is the program's own) with stdout and stderr in a log
 * file, stopped with SIGTERM, then SIGKILL, when stop() is called or the object goes away.
 */
final class Process
{
    /** @var resource|null */
    private $proc;
    /** @var string */
    private $logFile;
    /** @var string */
    private $name;

    /**
     * @param list<string> $command program and arguments
     * @param array<string, string> $env the complete environment of the child
     */
    public function __construct(string $name, array $command, array $env, ?string $cwd = null)
    {
        $this->name = $name;
        $this->logFile = tempnam(sys_get_temp_dir(), 'stellwerk-php-test-' . $name . '-');
        $proc = proc_open(
            $command,
            [0 => ['file', '/dev/null', 'r'], 1 => ['file', $this->logFile, 'a'], 2 => ['file', $this->logFile, 'a']],
            $pipes,
            $cwd,
            $env
        );
        if (!is_resource($proc)) {
            throw new \RuntimeException("cannot start $name: " . implode(' ', $command));
        }
        $this->proc = $proc;
    }

    public function __destruct()
    {
        $this->stop();
        if (is_file($this->logFile)) {
            unlink($this->logFile);
        }
    }

    public function pid(): int
    {
        return $this->proc === null ? 0 : (int) proc_get_status($this->proc)['pid'];
    }

    public function running(): bool
    {
        return $this->proc !== null && proc_get_status($this->proc)['running'];
    }

    public function log(): string
    {
        return is_file($this->logFile) ? (string) file_get_contents($this->logFile) : '';
    }

    /**
     * Waits (bounded) until `$pattern` matches the log; returns the matches.
     *
     * @return list<string>
     */
    public function waitForLog(string $pattern, float $seconds): array
    {
        $deadline = microtime(true) + $seconds;
        do {
            if (preg_match($pattern, $this->log(), $m)) {
                return $m;
            }
            if (!$this->running()) {
                throw new \RuntimeException("{$this->name} exited before logging $pattern; its log:\n" . $this->log());
            }
            usleep(50000);
        } while (microtime(true) < $deadline);
        throw new \RuntimeException("{$this->name} did not log $pattern within {$seconds}s; its log:\n" . $this->log());
    }

    public function kill(): void
    {
        $this->stop(9);
    }

    public function stop(int $signal = 15): void
    {
        if ($this->proc === null) {
            return;
        }
        if (proc_get_status($this->proc)['running']) {
            proc_terminate($this->proc, $signal);
            for ($i = 0; $i < 100 && proc_get_status($this->proc)['running']; $i++) {
                usleep(50000);
            }
            if (proc_get_status($this->proc)['running']) {
                proc_terminate($this->proc, 9);
            }
        }
        proc_close($this->proc);
        $this->proc = null;
    }

    /** A TCP port on 127.0.0.1 that was free a moment ago. */
    public static function freePort(): int
    {
        $server = stream_socket_server('tcp://127.0.0.1:0', $errno, $errstr);
        if ($server === false) {
            throw new \RuntimeException("no free port: $errstr");
        }
        $name = (string) stream_socket_get_name($server, false);
        fclose($server);
        return (int) substr($name, strrpos($name, ':') + 1);
    }
}
