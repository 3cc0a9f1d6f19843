<?php

namespace StellwerkStudip;

/**
 * The inline script that starts the browser client on every page: `STUDIP.Stellwerk` (an
 * instance of the global class `Stellwerk` from clients/js/dist/stellwerk.js, loaded before
 * it) and `STUDIP.StellwerkConfig` (user id, course id of the page, channel names).
 *
 * The first token is embedded (no extra request on page load); later ones (refresh before
 * `exp`, reconnects) come from the plugin's token URL with the session cookie.
 */
final class PageScript
{
    /**
     * @param string      $wsUrl    the broker's WebSocket URL as the browser reaches it (`wss://…/ws`)
     * @param string      $token    a fresh token for the user
     * @param string      $tokenUrl where the page fetches the next token (`plugins.php/stellwerkplugin/token`)
     * @param string      $userId   the logged-in user
     * @param string|null $courseId the course the page belongs to (`Context::getId()`), if any
     */
    public static function render(string $wsUrl, string $token, string $tokenUrl, string $userId, ?string $courseId): string
    {
        $config = [
            'url' => $wsUrl,
            'tokenUrl' => $tokenUrl,
            'user' => $userId,
            'userChannel' => 'user:' . $userId,
            'course' => $courseId,
            'courseChannelPrefix' => $courseId !== null ? 'course:' . $courseId . ':' : null,
        ];
        // JSON_HEX_*: nothing in a value can end the <script> element or open a comment.
        $flags = JSON_HEX_TAG | JSON_HEX_AMP | JSON_HEX_APOS | JSON_HEX_QUOT | JSON_UNESCAPED_SLASHES | JSON_THROW_ON_ERROR;
        $json = json_encode($config, $flags);
        $first = json_encode($token, $flags);
        return <<<JS
(function (config, firstToken) {
    'use strict';
    if (typeof window.Stellwerk !== 'function') {
        return;
    }
    window.STUDIP = window.STUDIP || {};
    window.STUDIP.StellwerkConfig = config;
    window.STUDIP.Stellwerk = new window.Stellwerk(config.url, {
        getToken: function () {
            if (firstToken !== null) {
                var token = firstToken;
                firstToken = null;
                return Promise.resolve(token);
            }
            return fetch(config.tokenUrl, { credentials: 'same-origin', headers: { Accept: 'application/json' } })
                .then(function (response) {
                    if (!response.ok) {
                        throw new Error('Stellwerk token: HTTP ' + response.status);
                    }
                    return response.json();
                })
                .then(function (body) {
                    return body.token;
                });
        }
    });
    window.STUDIP.Stellwerk.connect();
}($json, $first));
JS;
    }
}
