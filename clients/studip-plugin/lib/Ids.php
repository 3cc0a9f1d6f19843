<?php

namespace StellwerkStudip;

/** Stud.IP ids: 32 hex characters (user ids, `seminar_id`, …). */
final class Ids
{
    public static function isId(?string $id): bool
    {
        return $id !== null && strlen($id) === 32 && ctype_xdigit($id);
    }
}
