<?php

/**
 * Runs StellwerkPlugin.php against the stand-ins of stubs/studip.php, as one "request" of a
 * logged-in user: constructs the plugin, fires the three notifications, calls the token
 * route, prints what it saw as JSON. The fire-and-forget queue goes out when this ends.
 *
 * Environment: STELLWERK_URL, STELLWERK_WS_URL, STELLWERK_API_KEY, STELLWERK_JWT_SECRET;
 * arguments: <user id> <course id> <other user id>.
 */

require __DIR__ . '/stubs/studip.php';
require __DIR__ . '/../StellwerkPlugin.php';

[, $userId, $courseId, $otherId] = $argv;
$GLOBALS['user'] = User::find($userId);
$GLOBALS['perm'] = new Perm();
Context::$id = $courseId;
FakePdo::$rows = [['seminar_id' => $courseId, 'status' => 'tutor']];

$plugin = new StellwerkPlugin();

NotificationCenter::postNotification('ForumAfterInsert', 'topic1', [
    'topic_id' => 'topic1', 'seminar_id' => $courseId, 'user_id' => $userId, 'anonymous' => '0',
]);
$news = new StudipNews();
$news->id = 'news1';
$news->date = time() - 10;
foreach ([$courseId, 'studip'] as $rangeId) {
    $range = new NewsRange();
    $range->range_id = $rangeId;
    $news->news_ranges[] = $range;
}
NotificationCenter::postNotification('StudipNewsDidCreate', $news);
$thread = new BlubberThread();
$thread->id = 'thread1';
$thread->context_type = 'private';
$comment = new BlubberComment();
$comment->id = 'comment1';
$comment->user_id = $userId;
$comment->thread = $thread;
$mention = new BlubberMention();
$mention->user_id = $otherId;
BlubberMention::$mentions = [$mention];
NotificationCenter::postNotification('BlubberCommentDidCreate', $comment);

ob_start();
$plugin->perform('token');
$tokenResponse = json_decode((string) ob_get_clean(), true);

echo json_encode([
    'observed' => NotificationCenter::observed(),
    'scripts' => PageLayout::$scripts,
    'head' => PageLayout::$head,
    'queries' => FakePdo::$queries,
    'token' => $tokenResponse,
]), "\n";
