<?php

namespace StellwerkStudip\Tests;

use PHPUnit\Framework\TestCase;
use StellwerkStudip\PageScript;

/** The inline page script: nothing can escape the <script> element, and it runs (with node, where installed). */
final class PageScriptTest extends TestCase
{
    public function testValuesCannotEndTheScriptElement(): void
    {
        $script = PageScript::render('wss://broker.example.org/ws', 'a.b.c', 'https://studip.example.org/plugins.php/stellwerkplugin/token?x=1&y=</script>', 'u1', null);
        $this->assertStringNotContainsStringIgnoringCase('</script', $script);
        $this->assertStringNotContainsString('<!--', $script);
        $this->assertStringContainsString('\u003C/script\u003E', $script);
    }

    /** @requires OS Linux */
    public function testTheScriptStartsTheClientWithTheFirstTokenThenFetchesNewOnes(): void
    {
        $node = trim((string) shell_exec('command -v node 2>/dev/null'));
        if ($node === '') {
            $this->markTestSkipped('node is not installed (the script is checked for escaping only)');
        }
        $script = PageScript::render('wss://broker.example.org/ws', 'first.token.x', '/plugins.php/stellwerkplugin/token', 'u1', 'a07535cf2f8a72df33c12ddfa4b53dde');
        $harness = <<<'JS'
const calls = [];
globalThis.window = globalThis;
window.Stellwerk = class { constructor(url, options) { calls.push(['new', url]); this.options = options; }
                           connect() { calls.push(['connect']); } };
globalThis.fetch = async (url, init) => { calls.push(['fetch', url, init.credentials]);
                                         return { ok: true, json: async () => ({ token: 'second.token.y' }) }; };
SCRIPT
(async () => {
  const sw = window.STUDIP.Stellwerk;
  const tokens = [await sw.options.getToken(), await sw.options.getToken()];
  console.log(JSON.stringify({ calls, tokens, config: window.STUDIP.StellwerkConfig }));
})();
JS;
        $file = (string) tempnam(sys_get_temp_dir(), 'stellwerk-page-') . '.js';
        file_put_contents($file, str_replace('SCRIPT', $script, $harness));
        try {
            $out = shell_exec('timeout 30 ' . escapeshellarg($node) . ' ' . escapeshellarg($file) . ' 2>&1');
        } finally {
            unlink($file);
        }
        $result = json_decode((string) $out, true);
        $this->assertIsArray($result, (string) $out);
        $this->assertSame(['first.token.x', 'second.token.y'], $result['tokens']);
        $this->assertSame([
            ['new', 'wss://broker.example.org/ws'],
            ['connect'],
            ['fetch', '/plugins.php/stellwerkplugin/token', 'same-origin'],
        ], $result['calls']);
        $this->assertSame('user:u1', $result['config']['userChannel']);
        $this->assertSame('course:a07535cf2f8a72df33c12ddfa4b53dde:', $result['config']['courseChannelPrefix']);
    }
}
