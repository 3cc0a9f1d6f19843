<?php

namespace StellwerkStudip\Tests;

use PHPUnit\Framework\TestCase;
use StellwerkStudip\Settings;

/** config.php overridden by STELLWERK_* variables; incomplete settings switch the plugin off. */
final class SettingsTest extends TestCase
{
    public function testTheEnvironmentWinsOverTheFile(): void
    {
        $file = (string) tempnam(sys_get_temp_dir(), 'stellwerk-config-');
        file_put_contents($file, '<?php return ["api_url" => "http://file", "ws_url" => "ws://file/ws", "api_key" => "k", "jwt_secret" => "file-secret", "jwt_audience" => "stellwerk"];');
        try {
            $env = ['STELLWERK_URL' => 'http://env:8080', 'STELLWERK_TOKEN_TTL' => '900'];
            $settings = Settings::load($file, static function (string $name) use ($env) {
                return $env[$name] ?? false;
            });
        } finally {
            unlink($file);
        }
        $this->assertTrue($settings->complete());
        $this->assertSame('http://env:8080', $settings->get('api_url'));
        $this->assertSame('ws://file/ws', $settings->get('ws_url'));
        $this->assertSame(900, $settings->userToken()->ttlSeconds());
        $claims = json_decode(base64_decode(strtr(explode('.', $settings->userToken()->mint('u', 'user', []))[1], '-_', '+/')), true);
        $this->assertSame('stellwerk', $claims['aud']);
    }

    public function testWithoutAKeyOrUrlsThePluginStaysOff(): void
    {
        $none = static function (string $name) {
            return false;
        };
        $this->assertFalse(Settings::load('/nonexistent/config.php', $none)->complete());
        $this->assertFalse((new Settings(['api_url' => 'http://x', 'ws_url' => 'ws://x/ws', 'api_key' => 'k']))->complete(), 'no JWT key');

        $this->expectException(\InvalidArgumentException::class);
        new Settings(['api_ulr' => 'typo']);
    }
}
