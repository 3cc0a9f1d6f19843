<?php

namespace Stellwerk\Exception;

/**
 * Base class of everything this library throws for a failed call: catch this one to make
 * sure a broker problem never breaks a Stud.IP page.
 *
 * Two branches below it:
 * - {@see ApiException}: the broker answered with an error (`{"error":{"code","message"}}`);
 * - {@see TransportException}: no usable answer at all (connection refused, DNS, timeout).
 *
 * Programming errors (data that cannot be encoded as JSON, an empty channel list, an
 * unknown option) are \InvalidArgumentException instead, and are not caught by this.
 */
abstract class StellwerkException extends \RuntimeException
{
}
