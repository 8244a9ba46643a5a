<?php
// bench/proxy/php/index.php: the page bench/proxy/run requests through php-fpm behind nginx and
// behind servente, as a front controller (the URL names no file). A little work, and the same
// bytes on every request: the benchmark checks the size of every response and compares the two
// servers' pages, so nothing here may vary (no time, no client port, no server name).
$sum = 0;
for ($i = 1; $i <= 1000; $i++) {
    $sum += $i * $i;
}
header('Content-Type: text/plain; charset=utf-8');
echo "hello from php ", PHP_MAJOR_VERSION, ".", PHP_MINOR_VERSION, "\n";
echo "method: ", $_SERVER['REQUEST_METHOD'], "\n";
echo "uri: ", $_SERVER['REQUEST_URI'], "\n";
echo "script: ", $_SERVER['SCRIPT_NAME'], "\n";
echo "sum of squares 1..1000: ", $sum, "\n";
echo "md5: ", md5("servente" . $sum), "\n";
