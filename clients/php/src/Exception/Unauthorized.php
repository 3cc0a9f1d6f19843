<?php

namespace Stellwerk\Exception;

/**
 * HTTP 401 `unauthorized`: the API key is missing or wrong.
 */
class Unauthorized extends ApiException
{
}
