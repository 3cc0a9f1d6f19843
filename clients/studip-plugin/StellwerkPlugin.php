<?php

/**
 * Stellwerk for Stud.IP: live updates without polling.
 *
 * - On every page of a logged-in user: loads the browser client (assets/stellwerk.js, the IIFE
 *   bundle of clients/js) and starts it with the broker's URL and a token minted here from the
 *   user's course memberships (`STUDIP.Stellwerk`, `STUDIP.StellwerkConfig`).
 * - `plugins.php/stellwerkplugin/token` hands the page a fresh token (refresh, reconnect).
 * - Publishes on Stud.IP's notifications (`ForumAfterInsert`, `StudipNewsDidCreate`,
 *   `BlubberCommentDidCreate`) in fire-and-forget mode, so no request waits for the broker.
 *
 * What to publish is decided in lib/ (pure, unit-tested); this class only reads Stud.IP.
 * Written against Stud.IP 5.x APIs; it was not run inside Stud.IP (see README.md).
 */

require_once __DIR__ . '/autoload.php';

use Stellwerk\Client;
use StellwerkStudip\Notifications;
use StellwerkStudip\PageScript;
use StellwerkStudip\Publication;
use StellwerkStudip\Settings;

class StellwerkPlugin extends StudIPPlugin implements SystemPlugin
{
    /** @var Settings */
    private $settings;
    /** @var Client|null fire-and-forget client, made on the first publish */
    private $publisher;

    public function __construct()
    {
        parent::__construct();
        $this->settings = Settings::load(__DIR__ . '/config.php');
        if (!$this->settings->complete()) {
            return; // not configured: the plugin does nothing
        }
        $this->observeNotifications();
        if ($this->currentUserId() !== null && !Request::isXhr()) {
            $this->addBrowserClient();
        }
    }

    /** `plugins.php/stellwerkplugin/token`: `{"token": "…", "expires_in": 3600}` for the session's user. */
    public function perform($unconsumed_path)
    {
        if ($unconsumed_path !== 'token') {
            throw new Trails_Exception(404);
        }
        header('Content-Type: application/json');
        header('Cache-Control: no-store');
        $userId = $this->currentUserId();
        if ($userId === null || !$this->settings->complete()) {
            http_response_code(403);
            echo json_encode(['error' => 'not logged in']);
            return;
        }
        $userToken = $this->settings->userToken();
        echo json_encode([
            'token' => $this->mintToken($userId),
            'expires_in' => $userToken->ttlSeconds(),
        ]);
    }

    private function addBrowserClient(): void
    {
        $userId = (string) $this->currentUserId();
        $script = $this->settings->get('script_url') ?? $this->getPluginURL() . '/assets/stellwerk.js';
        PageLayout::addScript($script);
        $courseId = Context::getId();
        PageLayout::addHeadElement('script', [], PageScript::render(
            (string) $this->settings->get('ws_url'),
            $this->mintToken($userId),
            PluginEngine::getURL($this, [], 'token', true),
            $userId,
            is_string($courseId) && $courseId !== '' ? $courseId : null
        ));
    }

    private function mintToken(string $userId): string
    {
        // Newest memberships first: they go into the token if a user has very many.
        $rows = DBManager::get()->fetchAll(
            'SELECT seminar_id, status FROM seminar_user WHERE user_id = ? ORDER BY mkdate DESC',
            [$userId]
        );
        $user = User::find($userId);
        return $this->settings->userToken()->mint(
            $userId,
            (string) $GLOBALS['perm']->get_perm($userId),
            $rows,
            $user ? $user->getFullName() : null
        );
    }

    private function observeNotifications(): void
    {
        NotificationCenter::on(Notifications::FORUM_ENTRY_CREATED, function ($event, $topicId, $entry = null) {
            $this->publish(Notifications::forumEntryCreated(is_array($entry) ? $entry : []));
        });

        NotificationCenter::on(Notifications::NEWS_CREATED, function ($event, $news) {
            if (!$news instanceof StudipNews) {
                return;
            }
            $ranges = [];
            foreach ($news->news_ranges as $range) {
                $ranges[$range->range_id] = $range->range_id === 'studip'
                    ? 'global'
                    : (string) get_object_type($range->range_id, ['sem', 'inst', 'fak', 'user']);
            }
            $this->publish(Notifications::newsCreated($news->id, $ranges, (int) $news->date, time()));
        });

        NotificationCenter::on(Notifications::BLUBBER_COMMENT_CREATED, function ($event, $comment) {
            if (!$comment instanceof BlubberComment || !$comment->thread) {
                return;
            }
            $thread = $comment->thread;
            $participants = [];
            if ($thread->context_type === 'private') {
                foreach (BlubberMention::findBySQL('thread_id = ?', [$thread->id]) as $mention) {
                    $participants[] = $mention->user_id;
                }
            }
            $this->publish(Notifications::blubberCommentCreated(
                (string) $comment->id,
                (string) $thread->id,
                (string) $thread->context_type,
                (string) $thread->context_id,
                (string) $comment->user_id,
                $participants
            ));
        });
    }

    private function publish(?Publication $publication): void
    {
        if ($publication === null) {
            return;
        }
        if ($this->publisher === null) {
            $this->publisher = $this->settings->client(['fire_and_forget' => true, 'timeout' => 2]);
        }
        $this->publisher->publishMany($publication->channels, $publication->data);
    }

    private function currentUserId(): ?string
    {
        $user = $GLOBALS['user'] ?? null;
        $id = is_object($user) ? (string) $user->id : '';
        return $id !== '' && $id !== 'nobody' ? $id : null;
    }
}
