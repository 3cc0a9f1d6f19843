<?php

namespace Stellwerk\Tests\Support;

/** Stud.IP-shaped ids (32 hex characters), fresh per call so that tests never share channels. */
final class Ids
{
    public static function hex(): string
    {
        return bin2hex(random_bytes(16));
    }
}
