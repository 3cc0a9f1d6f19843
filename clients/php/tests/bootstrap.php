<?php

/**
 * Test bootstrap: a PSR-4 autoloader (no Composer needed offline) for the library, the tests
 * and the Stud.IP plugin's pure classes, and strict error handling.
 *
 * The tests start the real broker themselves (tests/Support/Broker.php):
 * - STELLWERK_BIN: the `stellwerk` binary (default ../../target/debug/stellwerk from here);
 * - STELLWERK_PLUGINS_DIR: the built example plugins (default ../../target/plugins).
 */

error_reporting(E_ALL);
ini_set('display_errors', 'stderr');

spl_autoload_register(static function (string $class): void {
    $roots = [
        'Stellwerk\\Tests\\' => __DIR__ . '/',
        'Stellwerk\\' => __DIR__ . '/../src/',
        'StellwerkStudip\\Tests\\' => __DIR__ . '/../../studip-plugin/tests/',
        'StellwerkStudip\\' => __DIR__ . '/../../studip-plugin/lib/',
    ];
    foreach ($roots as $prefix => $dir) {
        if (strncmp($class, $prefix, strlen($prefix)) === 0) {
            $file = $dir . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
            if (is_file($file)) {
                require $file;
            }
            return;
        }
    }
});
