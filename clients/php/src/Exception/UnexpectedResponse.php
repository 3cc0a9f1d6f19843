<?php

namespace Stellwerk\Exception;

/**
 * A success status whose body is not the JSON the API documents (something else answers
 * at the base URL, e.g. a web server's default page). getBody() holds the first 1,000 bytes.
 */
class UnexpectedResponse extends StellwerkException
{
    /** @var int */
    private $status;
    /** @var string */
    private $body;

    public function __construct(string $message, int $status, string $body)
    {
        parent::__construct($message, $status);
        $this->status = $status;
        $this->body = substr($body, 0, 1000);
    }

    public function getStatusCode(): int
    {
        return $this->status;
    }

    public function getBody(): string
    {
        return $this->body;
    }
}
