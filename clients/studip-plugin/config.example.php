<?php

// Copy to config.php (not committed: it holds secrets) or set the STELLWERK_* variables
// instead (they win). See README.md.
return [
    'api_url' => 'http://127.0.0.1:8080',              // the broker, as this server reaches it
    'ws_url' => 'wss://stellwerk.example.org/ws',      // the broker, as browsers reach it
    'api_key' => 'output of: openssl rand -hex 32',    // the broker's api_key
    'jwt_secret' => 'output of: openssl rand -hex 32', // the broker's jwt.secret (HS256), or:
    // 'jwt_private_key' => '/etc/studip/stellwerk-jwt.key', // RS256; broker: jwt.public_key_file
    // 'jwt_issuer' => 'https://studip.example.org',   // if the broker sets jwt.issuer
    // 'jwt_audience' => 'stellwerk',                   // if the broker sets jwt.audience
    'token_ttl' => 3600,
];
