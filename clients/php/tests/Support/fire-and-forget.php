<?php

/**
 * A whole PHP "request" in fire-and-forget mode, run as its own process by FireAndForgetTest:
 * publishes, prints `page done`, and ends. The queue goes out in the shutdown hook.
 *
 * Usage: php fire-and-forget.php <base url> <api key> <channel> <count>
 */

require __DIR__ . '/../bootstrap.php';

[, $url, $key, $channel, $count] = $argv;
$stellwerk = new \Stellwerk\Client($url, $key, ['fire_and_forget' => true]);
for ($n = 1; $n <= (int) $count; $n++) {
    $result = $stellwerk->publish($channel, ['n' => $n]);
    if ($result !== null) {
        fwrite(STDERR, "publish returned a result in fire-and-forget mode\n");
        exit(1);
    }
}
// The application's own shutdown work registered after the first publish still runs first.
register_shutdown_function(static function () use ($stellwerk): void {
    echo 'app shutdown, queued: ' . $stellwerk->pendingCount() . "\n";
});
echo "page done\n";
// A shutdown function that only comes to exist during shutdown, after the client's own ran,
// still gets its publish out (the client registers again).
register_shutdown_function(static function () use ($stellwerk, $channel): void {
    register_shutdown_function(static function () use ($stellwerk, $channel): void {
        $stellwerk->publish($channel, ['n' => 'late']);
    });
});
