<?php

namespace Stellwerk\Tests\Support;

/**
 * A Server-Sent Events client over curl_multi, so that a test keeps several streams open while
 * it calls the API: read() pumps the transfer until the next event or a deadline.
 */
final class SseStream
{
    public const TIMEOUT = 10.0;

    /** @var resource|\CurlMultiHandle */
    private $multi;
    /** @var resource|\CurlHandle */
    private $ch;
    /** @var string */
    private $buffer = '';
    /** @var string everything received, for refusals (JSON bodies) and failure messages */
    private $raw = '';
    /** @var list<array{event: string, data: string, id: string|null}> */
    private $events = [];
    /** @var int */
    private $status = 0;
    /** @var bool */
    private $finished = false;

    /**
     * Opens `GET /sse?…` and waits (bounded) for the status line.
     *
     * @param list<string> $channels
     */
    public static function open(string $baseUrl, array $channels, string $token): self
    {
        $query = implode('&', array_map(static function (string $c): string {
            return 'channel=' . rawurlencode($c);
        }, $channels));
        return new self($baseUrl . '/sse?' . $query . '&token=' . rawurlencode($token));
    }

    private function __construct(string $url)
    {
        $this->ch = curl_init($url);
        curl_setopt_array($this->ch, [
            CURLOPT_HTTPHEADER => ['Accept: text/event-stream'],
            CURLOPT_NOSIGNAL => true,
            CURLOPT_CONNECTTIMEOUT_MS => 5000,
            CURLOPT_TIMEOUT_MS => 120000,
            CURLOPT_HEADERFUNCTION => function ($ch, string $line): int {
                if (preg_match('#^HTTP/\S+ (\d{3})#', $line, $m)) {
                    $this->status = (int) $m[1];
                }
                return strlen($line);
            },
            CURLOPT_WRITEFUNCTION => function ($ch, string $chunk): int {
                $this->raw .= $chunk;
                $this->buffer .= str_replace("\r\n", "\n", $chunk);
                while (($end = strpos($this->buffer, "\n\n")) !== false) {
                    $block = substr($this->buffer, 0, $end);
                    $this->buffer = substr($this->buffer, $end + 2);
                    $this->parse($block);
                }
                return strlen($chunk);
            },
        ]);
        $this->multi = curl_multi_init();
        curl_multi_add_handle($this->multi, $this->ch);
        $deadline = microtime(true) + self::TIMEOUT;
        while ($this->status === 0 && !$this->finished && microtime(true) < $deadline) {
            $this->pump(0.05);
        }
        if ($this->status === 0) {
            throw new \RuntimeException("no answer from $url within " . self::TIMEOUT . 's');
        }
    }

    public function __destruct()
    {
        $this->close();
    }

    public function status(): int
    {
        return $this->status;
    }

    /**
     * The complete body of a refused stream (JSON error), waiting (bounded) for its end.
     *
     * @return mixed
     */
    public function errorBody()
    {
        $deadline = microtime(true) + self::TIMEOUT;
        while (!$this->finished && microtime(true) < $deadline) {
            $this->pump(0.05);
        }
        return json_decode($this->raw, true);
    }

    /**
     * The next event named `$name` (others skipped: keep-alives, join, leave), data decoded.
     *
     * @return array{event: string, data: mixed, id: string|null}
     */
    public function next(string $name, float $timeout = self::TIMEOUT): array
    {
        $deadline = microtime(true) + $timeout;
        while (true) {
            while ($this->events !== []) {
                $event = array_shift($this->events);
                if ($event['event'] === $name) {
                    $event['data'] = json_decode($event['data'], true);
                    return $event;
                }
            }
            if ($this->finished) {
                throw new \RuntimeException("stream ended before an `$name` event; received:\n" . $this->raw);
            }
            if (microtime(true) > $deadline) {
                throw new \RuntimeException("no `$name` event within {$timeout}s; received:\n" . $this->raw);
            }
            $this->pump(0.05);
        }
    }

    public function close(): void
    {
        if ($this->ch !== null) {
            curl_multi_remove_handle($this->multi, $this->ch);
            curl_multi_close($this->multi);
            $this->ch = null;
        }
    }

    private function pump(float $wait): void
    {
        do {
            $code = curl_multi_exec($this->multi, $active);
        } while ($code === CURLM_CALL_MULTI_PERFORM);
        while (($info = curl_multi_info_read($this->multi)) !== false) {
            $this->finished = true;
        }
        if (!$this->finished) {
            curl_multi_select($this->multi, $wait);
        }
    }

    private function parse(string $block): void
    {
        $event = 'message';
        $data = [];
        $id = null;
        foreach (explode("\n", $block) as $line) {
            if ($line === '' || $line[0] === ':') {
                continue;
            }
            [$field, $value] = array_pad(explode(':', $line, 2), 2, '');
            $value = ltrim($value, ' ');
            if ($field === 'event') {
                $event = $value;
            } elseif ($field === 'data') {
                $data[] = $value;
            } elseif ($field === 'id') {
                $id = $value;
            }
        }
        if ($data !== []) {
            $this->events[] = ['event' => $event, 'data' => implode("\n", $data), 'id' => $id];
        }
    }
}
