<?php

namespace Stellwerk\Exception;

/**
 * HTTP 500 `internal`: a plugin fault or a broker bug; nothing was published.
 */
class InternalError extends ApiException
{
}
