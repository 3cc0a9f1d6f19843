<?php

namespace Stellwerk\Exception;

/**
 * HTTP 404 `not_found`: no plugin governs the channel's namespace (fail closed).
 */
class NotFound extends ApiException
{
}
