<?php

namespace StellwerkStudip;

use Stellwerk\TokenFactory;

/**
 * The browser token of the logged-in user: global perm → `perm`, course memberships
 * (`seminar_user` rows) → `courses` (course id → status), the display name → `name` (shown in
 * presence by the `course` plugin).
 */
final class UserToken
{
    /** @var TokenFactory */
    private $tokens;
    /** @var int */
    private $ttlSeconds;
    /** @var int */
    private $maxCourses;

    /**
     * @param int $maxCourses at most this many courses go into the token (the first rows
     *        given: order them newest first). A token travels in `?token=` of `/sse` and in the
     *        WebSocket's first frame; each course adds about 45 bytes, so a few hundred keep
     *        it well below the 8 KiB many proxies allow for a URL.
     */
    public function __construct(TokenFactory $tokens, int $ttlSeconds = 3600, int $maxCourses = 150)
    {
        if ($ttlSeconds <= 0 || $maxCourses < 0) {
            throw new \InvalidArgumentException('ttlSeconds must be positive and maxCourses not negative');
        }
        $this->tokens = $tokens;
        $this->ttlSeconds = $ttlSeconds;
        $this->maxCourses = $maxCourses;
    }

    public function ttlSeconds(): int
    {
        return $this->ttlSeconds;
    }

    /**
     * @param string $globalPerm `$GLOBALS['perm']->get_perm()`: user, autor, tutor, dozent, admin, root
     * @param iterable<array<string, mixed>|object> $membershipRows rows with `seminar_id` and `status`
     */
    public function mint(string $userId, string $globalPerm, iterable $membershipRows, ?string $name = null): string
    {
        if (!in_array($globalPerm, TokenFactory::PERMS, true)) {
            throw new \InvalidArgumentException("no token for perm '$globalPerm' (not logged in?)");
        }
        $extra = $name !== null && $name !== '' ? ['name' => $name] : [];
        return $this->tokens->forUser($userId, $globalPerm, self::courses($membershipRows, $this->maxCourses), $this->ttlSeconds, $extra);
    }

    /**
     * The `courses` claim from `seminar_user` rows: course id → status. Rows with an id that is
     * not a Stud.IP id or a status the `course` plugin does not know are left out (it would
     * refuse them anyway); a course listed twice keeps the higher status.
     *
     * @param iterable<array<string, mixed>|object> $rows
     * @return array<string, string>
     */
    public static function courses(iterable $rows, int $max): array
    {
        $rank = array_flip(TokenFactory::COURSE_STATUSES);
        $courses = [];
        foreach ($rows as $row) {
            $row = is_object($row) && !$row instanceof \ArrayAccess ? get_object_vars($row) : $row;
            $courseId = isset($row['seminar_id']) ? (string) $row['seminar_id'] : '';
            $status = isset($row['status']) ? (string) $row['status'] : '';
            if (!Ids::isId($courseId) || !isset($rank[$status])) {
                continue;
            }
            if (isset($courses[$courseId])) {
                if ($rank[$status] > $rank[$courses[$courseId]]) {
                    $courses[$courseId] = $status;
                }
                continue;
            }
            if (count($courses) >= $max) {
                continue;
            }
            $courses[$courseId] = $status;
        }
        return $courses;
    }
}
