<?php

namespace Stellwerk\Exception;

/**
 * HTTP 403 `forbidden`: the channel's plugin denied the publish; its reason is getErrorMessage().
 */
class Forbidden extends ApiException
{
}
