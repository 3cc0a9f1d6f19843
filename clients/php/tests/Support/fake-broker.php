<?php

/**
 * Router for `php -S`: answers the way something in front of a broker might (a proxy's HTML
 * error page, a web server's default page), to check how the client maps answers that are
 * not the broker's JSON. The path selects the answer.
 */

$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
switch ($path) {
    case '/api/info':
        header('Content-Type: text/html');
        echo "<html><body>It works!</body></html>\n";
        break;
    case '/api/publish':
        http_response_code(502);
        header('Content-Type: text/html');
        echo "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>\n";
        break;
    case '/api/channels':
        http_response_code(429);
        header('Retry-After: ' . gmdate('D, d M Y H:i:s', time() + 120) . ' GMT');
        echo "slow down\n";
        break;
    case '/api/users/u/disconnect':
        http_response_code(418);
        header('Content-Type: application/json');
        echo json_encode(['error' => ['code' => 'teapot', 'message' => 'short and stout']]);
        break;
    default:
        http_response_code(500);
        echo '';
}
