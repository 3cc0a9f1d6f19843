<?php

namespace Stellwerk\Exception;

/**
 * No usable HTTP answer: the connection was refused, the host name did not resolve, TLS
 * failed, the connection broke. getCurlErrno() is curl's error number (`CURLE_*`).
 * Whether the broker got the request is unknown: a publish may or may not have happened.
 */
class TransportException extends StellwerkException
{
    /** @var int */
    private $curlErrno;

    public function __construct(string $message, int $curlErrno, ?\Throwable $previous = null)
    {
        parent::__construct($message, $curlErrno, $previous);
        $this->curlErrno = $curlErrno;
    }

    public function getCurlErrno(): int
    {
        return $this->curlErrno;
    }
}
