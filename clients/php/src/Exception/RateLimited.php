<?php

namespace Stellwerk\Exception;

/**
 * HTTP 429 `rate_limited`: `POST /api/publish` above `rate_limits.api_publishes_per_second`
 * (shared by every PHP worker with the API key). Nothing was published.
 * getRetryAfter() is the broker's `Retry-After` in seconds (null if it sent none).
 */
class RateLimited extends ApiException
{
    /** @var int|null */
    private $retryAfter;

    public function __construct(
        int $status,
        ?string $errorCode,
        string $errorMessage,
        string $method,
        string $path,
        ?int $retryAfter = null,
        ?\Throwable $previous = null
    ) {
        parent::__construct($status, $errorCode, $errorMessage, $method, $path, $previous);
        $this->retryAfter = $retryAfter;
    }

    /** Seconds to wait before the request would be admitted, from `Retry-After`; null if absent. */
    public function getRetryAfter(): ?int
    {
        return $this->retryAfter;
    }
}
