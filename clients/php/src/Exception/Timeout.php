<?php

namespace Stellwerk\Exception;

/**
 * The connect timeout or the total timeout passed (curl's `CURLE_OPERATION_TIMEDOUT`).
 * Whether a publish reached the broker is unknown.
 */
class Timeout extends TransportException
{
}
