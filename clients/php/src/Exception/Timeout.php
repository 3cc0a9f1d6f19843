<?php

namespace Stellwerk\Exception;

/**
 * The connect timeout or the total timeout passed (curl's `CURLE_OPERATION_TIMEDOUT`).
 * duringConnect() tells them apart: a timeout while connecting means the broker never got the
 * request (nothing was published); after that, whether a publish happened is unknown.
 */
class Timeout extends TransportException
{
    /** @var bool */
    private $duringConnect;

    public function __construct(string $message, int $curlErrno, bool $duringConnect = false, ?\Throwable $previous = null)
    {
        parent::__construct($message, $curlErrno, $previous);
        $this->duringConnect = $duringConnect;
    }

    /** True when no connection to the broker was established within `connect_timeout`. */
    public function duringConnect(): bool
    {
        return $this->duringConnect;
    }
}
