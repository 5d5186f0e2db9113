#!/usr/bin/python3
"""bucketfs.1 documents every option that `bucketfs --help` lists, and groff
renders it without warnings.

usage: test_manpage.py TEST_OPTIONS_BINARY BUCKETFS_1
"""
import re
import shutil
import subprocess
import sys


def main():
    binary, manpage = sys.argv[1], sys.argv[2]
    usage = subprocess.run([binary, '--usage'], check=True, capture_output=True,
                           text=True).stdout
    # "-o name", "-o name=ARG", "-o name[=ARG]" at the start of a help line.
    names = re.findall(r'^    -o ([a-z_0-9]+)', usage, re.M)
    names += re.findall(r'^    (-[a-zA-Z])[ ,]', usage, re.M)
    names = sorted(set(names) - {'-o'})
    assert len(names) > 40, names

    with open(manpage, encoding='utf-8') as f:
        # Undo roff's escapes and font changes to search plain text.
        text = f.read().replace('\\-', '-').replace('\\fR', '').replace('\\fP', '')
        text = text.replace('\\fI', '').replace('\\fB', '')
    missing = [n for n in names if not re.search(r'(^|[\s,"(])' + re.escape(n) + r'\b', text,
                                                 re.M)]
    if missing:
        print('bucketfs.1 does not document:', ' '.join(missing))
        return 1

    if shutil.which('groff'):
        r = subprocess.run(['groff', '-man', '-Tutf8', '-ww', '-z', manpage],
                           capture_output=True, text=True)
        if r.returncode != 0 or r.stderr.strip():
            print('groff:', r.stderr)
            return 1
    print(f'bucketfs.1 documents all {len(names)} options')
    return 0


if __name__ == '__main__':
    sys.exit(main())
