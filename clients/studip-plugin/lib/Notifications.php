<?php

namespace StellwerkStudip;

/**
 * What the plugin publishes for Stud.IP's notifications, as pure functions of plain values
 * (the plugin class pulls those out of Stud.IP's objects). Payloads follow DESIGN §5: ids and
 * a `type`, never content; the page re-fetches what it shows, with the user's own rights.
 *
 * Channels used (all governed by the example plugins):
 * - `course:<course_id>:forum`   new forum entries (`ForumAfterInsert`)
 * - `course:<course_id>:news`    news of a course (`StudipNewsDidCreate`)
 * - `public:news`                news on the start page (range `studip`)
 * - `course:<course_id>:blubber` Blubber comments in a course thread (`BlubberCommentDidCreate`)
 * - `public:blubber`             comments in the public (global) Blubber stream
 * - `user:<user_id>`             comments in a private Blubber thread, to each participant
 */
final class Notifications
{
    /** The notifications the plugin observes (see README for how sure each name is). */
    public const FORUM_ENTRY_CREATED = 'ForumAfterInsert';
    public const NEWS_CREATED = 'StudipNewsDidCreate';
    public const BLUBBER_COMMENT_CREATED = 'BlubberCommentDidCreate';

    /**
     * `ForumAfterInsert`: Stud.IP posts it with the topic id as subject and the entry's row
     * (`topic_id`, `seminar_id`, `user_id`, `anonymous`, …) as user data.
     *
     * @param array<string, mixed> $entry
     */
    public static function forumEntryCreated(array $entry): ?Publication
    {
        $topicId = self::string($entry, 'topic_id');
        $courseId = self::string($entry, 'seminar_id');
        if ($topicId === null || !Ids::isId($courseId)) {
            return null;
        }
        $data = ['type' => 'forum.entry.created', 'id' => $topicId, 'course_id' => $courseId];
        // An anonymous posting stays anonymous on the wire too.
        $author = self::string($entry, 'user_id');
        if ($author !== null && empty($entry['anonymous'])) {
            $data['author'] = $author;
        }
        return new Publication(["course:$courseId:forum"], $data);
    }

    /**
     * `StudipNewsDidCreate`: a news with its ranges (range id → Stud.IP object type as
     * `get_object_type()` names it: `sem` course, `inst`/`fak` institute, `user` profile,
     * `global` the start page). Institute and profile news have no channel here. A news whose
     * publication date lies ahead is not announced (the page would not show it yet).
     *
     * @param array<string, string> $ranges
     */
    public static function newsCreated(string $newsId, array $ranges, int $visibleFrom, int $now): ?Publication
    {
        if ($newsId === '' || $visibleFrom > $now) {
            return null;
        }
        $channels = [];
        foreach ($ranges as $rangeId => $type) {
            if ($type === 'sem' && Ids::isId((string) $rangeId)) {
                $channels[] = "course:$rangeId:news";
            } elseif ($type === 'global' || $rangeId === 'studip') {
                $channels[] = 'public:news';
            }
        }
        $channels = array_values(array_unique($channels));
        return $channels === [] ? null : new Publication($channels, ['type' => 'news.created', 'id' => $newsId]);
    }

    /**
     * `BlubberCommentDidCreate`: a comment in a thread whose `context_type` is `course`,
     * `public` or `private`. Private threads go to each participant's own channel (pass their
     * ids; the author is left out), course threads to the course, the public stream to every
     * logged-in user.
     *
     * @param list<string> $participants user ids of a private thread
     */
    public static function blubberCommentCreated(
        string $commentId,
        string $threadId,
        string $contextType,
        string $contextId,
        string $authorId,
        array $participants = []
    ): ?Publication {
        if ($commentId === '' || $threadId === '') {
            return null;
        }
        $data = ['type' => 'blubber.comment.created', 'id' => $commentId, 'thread_id' => $threadId];
        switch ($contextType) {
            case 'course':
                return Ids::isId($contextId) ? new Publication(["course:$contextId:blubber"], $data) : null;
            case 'public':
                return new Publication(['public:blubber'], $data);
            case 'private':
                $channels = [];
                foreach ($participants as $userId) {
                    if (is_string($userId) && $userId !== '' && $userId !== $authorId) {
                        $channels["user:$userId"] = true;
                    }
                }
                return $channels === [] ? null : new Publication(array_keys($channels), $data);
            default:
                return null;
        }
    }

    /** @param array<string, mixed> $row */
    private static function string(array $row, string $key): ?string
    {
        return isset($row[$key]) && is_string($row[$key]) && $row[$key] !== '' ? $row[$key] : null;
    }
}
