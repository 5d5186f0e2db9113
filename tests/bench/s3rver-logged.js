#!/usr/bin/env node
'use strict';
/*
 * s3rver (tests/node_modules) with a request log of its own, for the
 * benchmark: one line per request, "METHOD URL STATUS USER-AGENT", appended to LOGFILE.
 * (s3rver's own logger cuts the method and path off its lines.)
 *
 *   node s3rver-logged.js ADDRESS PORT DATA_DIR LOGFILE
 *
 * Needs NODE_OPTIONS=--openssl-legacy-provider for paged listings (see
 * tests/servers/servers.py).
 */
const fs = require('fs');
const path = require('path');

const [, , address, port, directory, logfile] = process.argv;
if (!logfile) {
  console.error('usage: s3rver-logged.js ADDRESS PORT DATA_DIR LOGFILE');
  process.exit(2);
}
const S3rver = require(path.join(__dirname, '..', 'node_modules', 's3rver'));

fs.mkdirSync(directory, { recursive: true });
const fd = fs.openSync(logfile, 'a');
const server = new S3rver({ address, port: Number(port), directory, silent: true });
server.middleware.unshift(async (ctx, next) => {
  try {
    await next();
  } finally {
    const ua = (ctx.get('user-agent') || '-').replace(/\s+/g, '_');
    fs.writeSync(fd, `${ctx.method} ${ctx.url} ${ctx.status} ${ua}\n`);
  }
});
server.run((err, where) => {
  if (err) {
    console.error(err);
    process.exit(1);
  }
  console.log(`s3rver listening on ${where.address}:${where.port}`);
});
