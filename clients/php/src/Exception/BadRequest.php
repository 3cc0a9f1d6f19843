<?php

namespace Stellwerk\Exception;

/**
 * HTTP 400 `bad_request`: a malformed request (invalid channel name, presence on a namespace without presence, a bad query parameter). A bug in the caller: retrying does not help.
 */
class BadRequest extends ApiException
{
}
