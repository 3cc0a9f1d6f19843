<?php

namespace Stellwerk\Exception;

/**
 * The broker answered with an HTTP error status. The subclass follows the API's error code
 * (`unauthorized` → {@see Unauthorized}, …); a status without a subclass (or an unknown code)
 * is an ApiException itself.
 *
 * `getCode()` is the HTTP status, `getErrorCode()` the API's code (`forbidden`, …; null when
 * the body was not the broker's JSON, e.g. a proxy's HTML page), `getErrorMessage()` the
 * API's message (for logs: the plugin's deny reason on 403).
 */
class ApiException extends StellwerkException
{
    /** @var int */
    private $status;
    /** @var string|null */
    private $errorCode;
    /** @var string */
    private $errorMessage;
    /** @var string */
    private $method;
    /** @var string */
    private $path;

    public function __construct(
        int $status,
        ?string $errorCode,
        string $errorMessage,
        string $method,
        string $path,
        ?\Throwable $previous = null
    ) {
        $this->status = $status;
        $this->errorCode = $errorCode;
        $this->errorMessage = $errorMessage;
        $this->method = $method;
        $this->path = $path;
        parent::__construct(
            sprintf(
                'Stellwerk %s %s: %d %s: %s',
                $method,
                $path,
                $status,
                $errorCode ?? 'error',
                $errorMessage
            ),
            $status,
            $previous
        );
    }

    /** The HTTP status (same as getCode()). */
    public function getStatusCode(): int
    {
        return $this->status;
    }

    /** The API's error code (`bad_request`, `forbidden`, …), or null for a non-API body. */
    public function getErrorCode(): ?string
    {
        return $this->errorCode;
    }

    /** The API's message, for humans; do not parse it. */
    public function getErrorMessage(): string
    {
        return $this->errorMessage;
    }

    /** The request's method, e.g. `POST`. */
    public function getMethod(): string
    {
        return $this->method;
    }

    /** The request's path (without the base URL and without the API key), e.g. `/api/publish`. */
    public function getPath(): string
    {
        return $this->path;
    }
}
