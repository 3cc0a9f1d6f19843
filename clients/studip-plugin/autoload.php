<?php

/**
 * Autoloading for the plugin: Composer's when the plugin was installed with it
 * (`composer require stellwerk/stellwerk-php` in the plugin directory), otherwise the library
 * next to it in this repository (clients/php/src) and the plugin's own lib/.
 */

if (is_file(__DIR__ . '/vendor/autoload.php')) {
    require_once __DIR__ . '/vendor/autoload.php';
}

spl_autoload_register(static function (string $class): void {
    $roots = [
        'StellwerkStudip\\' => __DIR__ . '/lib/',
        'Stellwerk\\' => __DIR__ . '/../php/src/',
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
