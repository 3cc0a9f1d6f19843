<?php

namespace Stellwerk\Tests;

use PHPUnit\Framework\TestCase;

/**
 * `php -l` over every PHP file of clients/php and clients/studip-plugin, and a check for
 * syntax PHP 7.4 does not have (the library must run on 7.4 and 8.1–8.3; only one PHP is
 * installed here, so 7.4 itself is not run: this catches the usual slips by token).
 */
final class LintTest extends TestCase
{
    /** @return list<string> */
    private static function sources(): array
    {
        $files = [];
        foreach ([dirname(__DIR__), dirname(__DIR__, 2) . '/studip-plugin'] as $root) {
            $iterator = new \RecursiveIteratorIterator(new \RecursiveDirectoryIterator($root, \FilesystemIterator::SKIP_DOTS));
            foreach ($iterator as $file) {
                $path = $file->getPathname();
                if (substr($path, -4) === '.php' && strpos($path, '/vendor/') === false) {
                    $files[] = $path;
                }
            }
        }
        sort($files);
        return $files;
    }

    public function testEverySourceFilePassesPhpLint(): void
    {
        $files = self::sources();
        $this->assertGreaterThan(20, count($files));
        foreach ($files as $file) {
            $proc = proc_open(
                ['timeout', '30', PHP_BINARY, '-d', 'display_errors=1', '-d', 'error_reporting=-1', '-l', $file],
                [0 => ['file', '/dev/null', 'r'], 1 => ['pipe', 'w'], 2 => ['pipe', 'w']],
                $pipes
            );
            $this->assertIsResource($proc);
            $out = stream_get_contents($pipes[1]) . stream_get_contents($pipes[2]);
            fclose($pipes[1]);
            fclose($pipes[2]);
            $this->assertSame(0, proc_close($proc), $out);
            $this->assertStringContainsString('No syntax errors detected', (string) $out, $file);
            $this->assertStringNotContainsString('Deprecated', (string) $out, $file);
        }
    }

    public function testNoSyntaxNewerThanPhp74(): void
    {
        $newer = [
            'T_MATCH' => 'match (8.0)',
            'T_NULLSAFE_OBJECT_OPERATOR' => '?-> (8.0)',
            'T_ATTRIBUTE' => '#[attributes] (8.0)',
            'T_READONLY' => 'readonly (8.1)',
            'T_ENUM' => 'enum (8.1)',
        ];
        $newerTypes = ['mixed', 'never', 'false', 'null'];
        $newerFunctions = ['str_contains', 'str_starts_with', 'str_ends_with', 'array_is_list', 'get_debug_type', 'fdiv', 'preg_last_error_msg', 'get_resource_id', 'enum_exists'];
        foreach (self::sources() as $file) {
            $tokens = token_get_all((string) file_get_contents($file));
            $count = count($tokens);
            for ($i = 0; $i < $count; $i++) {
                $token = $tokens[$i];
                if (is_array($token)) {
                    $name = token_name($token[0]);
                    $this->assertArrayNotHasKey($name, $newer, "$file:{$token[2]}: " . ($newer[$name] ?? ''));
                    // Named arguments (8.0) look like `name:` inside a call: an identifier
                    // followed by a single `:`, after `(` or `,`.
                    if ($token[0] === T_STRING) {
                        $next = self::nextSignificant($tokens, $i);
                        $prev = self::previousSignificant($tokens, $i);
                        if ($next === ':' && in_array($prev, ['(', ','], true)) {
                            $this->fail("$file:{$token[2]}: named argument {$token[1]}: (8.0)");
                        }
                        // Functions PHP 7.4 does not have.
                        if (in_array(strtolower($token[1]), $newerFunctions, true) && $next === '(' && !in_array($prev, ['->', '::', 'function'], true)) {
                            $this->fail("$file:{$token[2]}: {$token[1]}() is PHP 8 only");
                        }
                        // Parameter types 7.4 lacks: `mixed $x` (return types: below).
                        if (in_array(strtolower($token[1]), $newerTypes, true) && in_array($prev, ['(', ',', '?'], true)) {
                            $after = self::nextSignificant($tokens, $i);
                            if ($after !== '' && $after[0] === '$') {
                                $this->fail("$file:{$token[2]}: parameter type {$token[1]} (8.0+)");
                            }
                        }
                    }
                    // First-class callables (8.1): `f(...)`.
                    if ($token[0] === T_ELLIPSIS && self::previousSignificant($tokens, $i) === '(' && self::nextSignificant($tokens, $i) === ')') {
                        $this->fail("$file:{$token[2]}: first-class callable (8.1)");
                    }
                }
            }
            // Declarations, checked on the code without comments and strings.
            $code = '';
            foreach ($tokens as $token) {
                if (!is_array($token)) {
                    $code .= $token;
                } elseif (in_array($token[0], [T_COMMENT, T_DOC_COMMENT], true)) {
                    $code .= ' ';
                } elseif (in_array($token[0], [T_CONSTANT_ENCAPSED_STRING, T_ENCAPSED_AND_WHITESPACE, T_INLINE_HTML], true)) {
                    $code .= "''";
                } else {
                    $code .= $token[1];
                }
            }
            $declarations = [
                'constructor promotion (8.0)' => '/function\s+__construct\s*\([^)]*\b(public|private|protected|readonly)\s/s',
                'union parameter type (8.0)' => '/function\s*&?\s*\w*\s*\([^)]*\b\w+\s*\|\s*\w+\s+&?\.{0,3}\$\w+/s',
                'union return type (8.0)' => '/function\s*&?\s*\w*\s*\([^)]*\)\s*(use\s*\([^)]*\)\s*)?:\s*\??[\w\\\\]+\s*\|/',
                'return type 7.4 lacks (8.0+)' => '/function\s*&?\s*\w*\s*\([^)]*\)\s*(use\s*\([^)]*\)\s*)?:\s*\??(mixed|never|false|null|static)\s*[{;]/i',
                'new in initializer (8.1)' => '/function\s*&?\s*\w*\s*\([^)]*=\s*new\s/s',
            ];
            foreach ($declarations as $what => $pattern) {
                $this->assertSame(0, preg_match($pattern, $code, $m), "$file: $what: " . ($m[0] ?? ''));
            }
        }
    }

    /** @param array<int, mixed> $tokens @return string the next non-whitespace token's text */
    private static function nextSignificant(array $tokens, int $i): string
    {
        for ($j = $i + 1; $j < count($tokens); $j++) {
            if (is_array($tokens[$j]) && in_array($tokens[$j][0], [T_WHITESPACE, T_COMMENT, T_DOC_COMMENT], true)) {
                continue;
            }
            return is_array($tokens[$j]) ? $tokens[$j][1] : $tokens[$j];
        }
        return '';
    }

    /** @param array<int, mixed> $tokens */
    private static function previousSignificant(array $tokens, int $i): string
    {
        for ($j = $i - 1; $j >= 0; $j--) {
            if (is_array($tokens[$j]) && in_array($tokens[$j][0], [T_WHITESPACE, T_COMMENT, T_DOC_COMMENT], true)) {
                continue;
            }
            return is_array($tokens[$j]) ? $tokens[$j][1] : $tokens[$j];
        }
        return '';
    }
}
