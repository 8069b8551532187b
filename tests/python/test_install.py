"""`pip install ./python` offline into a fresh venv (python3 -m venv --system-site-packages, the
Debian setuptools, --no-build-isolation, no index), then an import and real calls from outside
the checkout, the library found through $LEDGER_LIBRARY."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import support



class Install(unittest.TestCase):
    def test_pip_install_into_a_fresh_venv_offline(self) -> None:
        tmp = tempfile.mkdtemp(prefix="ledger-py-install-")
        try:
            source = os.path.join(tmp, "src", "python")
            shutil.copytree(os.path.join(support.REPO, "python"), source,
                            ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
            venv = os.path.join(tmp, "venv")
            subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", venv], check=True, timeout=300)
            python = os.path.join(venv, "bin", "python")
            # No index at all (offline), no PYTHONPATH (the checkout's package must not be what imports).
            env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "PYTHONPATH"}
            env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_CACHE_DIR="1")
            pip_env = {k: v for k, v in env.items() if k != "LD_PRELOAD"}  # pip loads no libledger
            result = subprocess.run([python, "-m", "pip", "install", "--no-build-isolation", "./python"],
                                    cwd=os.path.dirname(source), env=pip_env, capture_output=True, text=True,
                                    timeout=600)
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
            # From outside the checkout, the installed copy is the one imported, with its py.typed.
            program = ("import ledger, ledger.httpx, os, tempfile\n"
                       "print(ledger.__file__)\n"
                       "print(os.path.exists(os.path.join(os.path.dirname(ledger.__file__), 'py.typed')))\n"
                       "d = tempfile.mkdtemp()\n"
                       "led = ledger.Ledger.create(d, max_accounts=8, max_reservations=8, max_processes=4)\n"
                       "led.set_budget('alice', ledger.usd('1'), ledger.DAILY)\n"
                       "led.set_price('m/x', ledger.usd('1'), ledger.usd('2'))\n"
                       "with led.hold('alice', 'm/x', led.estimate('m/x', 10, 10)) as h:\n"
                       "    h.commit(2.83125e-05)\n"
                       "print(led.balance('alice').spent_nanousd)\n"
                       "led.close(); ledger.destroy_segment(d)\n")
            env["LEDGER_LIBRARY"] = support.LIBRARY
            result = subprocess.run([python, "-c", program], cwd=tmp, env=env, capture_output=True, text=True,
                                    timeout=60)
            self.assertEqual(result.returncode, 0, result.stderr)
            where, typed, spent = result.stdout.split()
            self.assertTrue(where.startswith(venv), where)
            self.assertEqual((typed, spent), ("True", "28313"))
            result = subprocess.run([python, "-m", "pip", "show", "ledger-budgets"], env=env, capture_output=True,
                                    text=True, timeout=60)
            self.assertIn("Version: 0.1.0", result.stdout)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
