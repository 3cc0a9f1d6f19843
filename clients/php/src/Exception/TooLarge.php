<?php

namespace Stellwerk\Exception;

/**
 * HTTP 413 `too_large`: the request body is larger than the broker's `limits.max_publish_bytes` (default 1 MiB).
 */
class TooLarge extends ApiException
{
}
