<?php

/**
 * Stand-ins for the few Stud.IP classes StellwerkPlugin.php touches, written from Stud.IP 5.x's
 * API as read in its sources (not Stud.IP itself: they record calls and return fixtures).
 * Loaded only by studip-smoke.php, in a process of its own.
 */

interface SystemPlugin
{
}

class StudIPPlugin
{
    public function __construct()
    {
    }

    public function getPluginURL()
    {
        return 'https://studip.example.org/plugins_packages/stellwerk/Stellwerk';
    }
}

class Trails_Exception extends Exception
{
}

class Request
{
    public static function isXhr()
    {
        return false;
    }
}

class Context
{
    public static $id = null;

    public static function getId()
    {
        return self::$id;
    }
}

class PluginEngine
{
    public static function getURL($plugin, $params = [], $path = '', $ignore_registered_params = false)
    {
        return 'https://studip.example.org/plugins.php/' . strtolower(get_class($plugin)) . '/' . $path;
    }
}

class PageLayout
{
    public static $scripts = [];
    public static $head = [];

    public static function addScript($source, $attributes = [])
    {
        self::$scripts[] = $source;
    }

    public static function addHeadElement($name, $attributes = [], $content = null)
    {
        self::$head[] = [$name, $attributes, $content];
    }
}

class FakePdo
{
    public static $rows = [];
    public static $queries = [];

    public function fetchAll($sql, $params = [])
    {
        self::$queries[] = [$sql, $params];
        return self::$rows;
    }
}

class DBManager
{
    public static function get()
    {
        return new FakePdo();
    }
}

class User
{
    public $id;

    public static function find($id)
    {
        $user = new self();
        $user->id = $id;
        return $user;
    }

    public function getFullName()
    {
        return 'Ada Lovelace';
    }
}

class Perm
{
    public $perm = 'autor';

    public function get_perm($user_id = false)
    {
        return $this->perm;
    }
}

class NotificationCenter
{
    private static $observers = [];

    public static function on($event, callable $callback, $object = null)
    {
        self::$observers[$event][] = $callback;
    }

    public static function postNotification($event, $subject = null, $userData = null)
    {
        foreach (self::$observers[$event] ?? [] as $callback) {
            $callback($event, $subject, $userData);
        }
    }

    public static function observed()
    {
        return array_keys(self::$observers);
    }
}

class NewsRange
{
    public $range_id;
}

class StudipNews
{
    public $id;
    public $date;
    public $news_ranges = [];
}

class BlubberThread
{
    public $id;
    public $context_type;
    public $context_id;
}

class BlubberComment
{
    public $id;
    public $user_id;
    public $thread;
}

class BlubberMention
{
    public static $mentions = [];
    public $user_id;

    public static function findBySQL($sql, $params = [])
    {
        return self::$mentions;
    }
}

function get_object_type($id, $check_only = [])
{
    return strlen($id) === 32 ? 'sem' : 'inst';
}
