<?php

namespace Stellwerk\Exception;

/**
 * HTTP 503 `unavailable`: the broker cannot take this now (with the Redis engine: Redis is
 * unreachable, nothing was published). Retry later, with back-off.
 *
 * Also thrown for 502 and 504 answers that are not the broker's own JSON (a reverse proxy in
 * front of a broker that is down or restarting): the same advice applies.
 */
class Unavailable extends ApiException
{
}
