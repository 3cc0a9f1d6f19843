<?php

namespace StellwerkStudip;

/** What to publish for a Stud.IP event: the channels and the (small) payload. */
final class Publication
{
    /** @var list<string> */
    public $channels;
    /** @var array<string, mixed> */
    public $data;

    /**
     * @param list<string> $channels at least one
     * @param array<string, mixed> $data ids and a `type`; the page fetches details over JSON:API
     */
    public function __construct(array $channels, array $data)
    {
        if ($channels === []) {
            throw new \InvalidArgumentException('a publication needs a channel');
        }
        $this->channels = array_values($channels);
        $this->data = $data;
    }
}
