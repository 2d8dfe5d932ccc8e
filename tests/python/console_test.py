"""The web console in a real headless Chromium (Debian's `chromium` and
`chromium-driver`, driven through Selenium) against a `tollgate dev --tls`
cluster that `devcluster` starts: sign in, create an API, a plan and a
key, see the key's secret exactly once, move the usage chart and the live
decisions with real checks, disable, enable, reroll, search, page and
delete keys, and fit every page on a phone. `.ci/run console` runs it:

    python tests/python/console_test.py target/debug/tollgate [SCREENSHOT_DIR]

Screenshots of every page go to SCREENSHOT_DIR (default
target/console-screenshots; `usage-full.png` is the one in the README, as
docs/console.png); the path is printed. Assertions read the DOM
(a chart's title, description and the table beside it), never pixels.
Selenium is told where the browser and its driver are, so it never looks
for (or downloads) either. Prints one closing line `N passed, N failed`
and exits non-zero on any failure; stops the cluster and the browser
however it ends.
"""

import datetime
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request

# Selenium Manager is never needed (both paths are given below); offline,
# it must not even try the network.
os.environ["SE_OFFLINE"] = "true"

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from devcluster import Cases, Cluster  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Where the console keeps the admin token (console.js, TOKEN_KEY).
TOKEN_KEY = "tollgate.console.adminToken"
PAGES = ["cluster", "apis", "plans", "keys", "usage", "decisions"]


def start_browser(workdir):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--lang=en-GB"]:
        options.add_argument(arg)
    # The dev cluster's certificates come from its own CA, made for this run.
    options.accept_insecure_certs = True
    # The browser's console, read at the end for CSP violations and script errors.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=os.path.join(workdir, "chromedriver.log"))
    return webdriver.Chrome(service=service, options=options)


class Console:
    """The browser on node 1's console, and the cluster behind it."""

    def __init__(self, driver, cluster, shots):
        self.driver = driver
        self.cluster = cluster
        self.url = f"https://127.0.0.1:{cluster.base}/console"
        self.shots = shots
        self.wait = WebDriverWait(driver, 20)

    # The page

    def find(self, css):
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css):
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def visible(self, css, timeout=20):
        return WebDriverWait(self.driver, timeout).until(EC.visibility_of_element_located((By.CSS_SELECTOR, css)))

    def gone(self, css, timeout=20):
        WebDriverWait(self.driver, timeout).until(lambda d: not d.find_elements(By.CSS_SELECTOR, css))

    def until(self, what, holds, timeout=30):
        """Waits until `holds()` is truthy (page elements may be redrawn meanwhile)."""
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            try:
                last = holds()
                if last:
                    return last
            except Exception as e:  # noqa: BLE001 - a redrawn element: look again
                last = e
            time.sleep(0.25)
        raise AssertionError(f"gave up waiting for {what} (last: {last!r})")

    def text(self, css):
        """An element's text, shown or not (a table inside a closed <details>)."""
        return self.js("const e = document.querySelector(arguments[0]); return e ? e.textContent : null", css)

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def open_page(self, name):
        """Follows the navigation link to a page and waits for its heading."""
        title = {"cluster": "Cluster", "apis": "APIs", "plans": "Plans", "keys": "Keys", "usage": "Usage",
                 "decisions": "Live decisions"}[name]
        self.find(f'#nav a[href="#/{name}"]').click()
        self.until(f"the {title} page", lambda: self.find("#page-title").text == title
                   and self.find(f'#nav a[href="#/{name}"]').get_attribute("aria-current") == "page")
        self.visible(f"#page-{name}")

    def fill(self, form, name, value):
        element = self.find(f'{form} [name="{name}"]')
        element.clear()
        element.send_keys(str(value))

    def sign_in(self, token):
        self.visible("#sign-in")
        self.find("#token").send_keys(token)
        self.find('#sign-in-form button[type="submit"]').click()

    def stored(self):
        """Every value in this origin's localStorage and sessionStorage."""
        return self.js("return {local: Object.keys(localStorage).map(k => localStorage.getItem(k)),"
                       " session: Object.keys(sessionStorage).map(k => sessionStorage.getItem(k))}")

    def screenshot(self, name):
        path = os.path.join(self.shots, f"{name}.png")
        self.driver.save_screenshot(path)
        return path

    def full_screenshot(self, name):
        """The whole page, not just what the window shows."""
        width, height = self.js("return [window.innerWidth, document.documentElement.scrollHeight]")
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                    {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        try:
            return self.screenshot(name)
        finally:
            self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    def key_row(self, name):
        rows = self.all(f'#keys tbody tr[data-name="{name}"]')
        return rows[0] if rows else None

    def key_status(self, name):
        row = self.key_row(name)
        return row.find_element(By.CSS_SELECTOR, ".key-status").text if row else None

    def confirm(self, accept):
        """Answers the confirmation dialog; returns what it asked."""
        text = self.visible("#confirm").text
        assert self.js("return document.getElementById('confirm').open"), "the dialog is not open"
        self.find("#confirm-ok" if accept else "#confirm-cancel").click()
        WebDriverWait(self.driver, 10).until(lambda d: not self.js("return document.getElementById('confirm').open"))
        return text

    # The cluster

    def check(self, secret, api="petstore"):
        """One `POST /v1/check` on node 1 (the node whose console is open): the decision."""
        body = json.dumps({"api": api, "stage": "prod", "method": "GET", "path": "/pets/1",
                           "source_ip": "203.0.113.9", "headers": {"x-api-key": secret}}).encode()
        request = urllib.request.Request(f"https://127.0.0.1:{self.cluster.base}/v1/check", data=body,
                                         method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, context=self.cluster.https, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            return json.loads(e.read() or b"null")

    def decided(self, secret, reason, timeout=30):
        """Checks until node 1 decides `reason` (a change takes a moment to reach it)."""
        self.until(f"node 1 to decide {reason}", lambda: self.check(secret)["reason"] == reason, timeout)


def main(binary, shots):
    cases = Cases("console")
    case = cases.case
    os.makedirs(shots, exist_ok=True)
    state = {}

    with tempfile.TemporaryDirectory() as workdir:
        cluster = Cluster(binary, workdir, "console")
        driver = None
        try:
            cluster.wait_leader()
            driver = start_browser(workdir)
            ui = Console(driver, cluster, shots)

            def dev_prints_the_console():
                printed = open(cluster.out.name).read()
                for node in range(3):
                    url = f"https://127.0.0.1:{cluster.base + node}/console"
                    assert f"node {node + 1}: {url}" in printed, printed

            def sign_in_page():
                driver.get(ui.url)
                ui.visible("#token")
                assert not ui.find("#nav").is_displayed(), "the sections show before sign-in"
                label = ui.find('label[for="token"]').text
                assert label == "Admin token", label
                ui.screenshot("sign-in")

            def wrong_token():
                ui.sign_in("tga_console-test-wrong-token-0123456789")
                message = ui.visible("#sign-in-message").text
                assert "refused (401)" in message, message
                assert ui.stored() == {"local": [], "session": []}, ui.stored()

            def sign_in():
                ui.sign_in(cluster.admin_token)
                ui.until("the cluster page", lambda: ui.find("#page-title").text == "Cluster")
                stored = ui.stored()
                assert stored["session"] == [cluster.admin_token], "the token is in session storage, alone"
                assert ui.js("return sessionStorage.getItem(arguments[0])", TOKEN_KEY) == cluster.admin_token
                assert stored["local"] == [], stored
                assert cluster.admin_token not in driver.current_url, driver.current_url
                assert cluster.admin_token not in driver.page_source, "the token is on the page"

            def cluster_page():
                rows = ui.until("three members", lambda: len(ui.all("#members tbody tr")) == 3 and ui.all("#members tbody tr"))
                roles = [r.find_elements(By.CSS_SELECTOR, "td")[0].text for r in rows]
                assert roles.count("leader") == 1 and roles.count("voter") == 2, roles
                assert "node 1 (this node)" in ui.find("#members").text
                heading = ui.find("#this-node-title").text
                assert heading == "This node: node 1", heading
                facts = ui.find("#page-cluster dl.facts").text
                for fact in ["Role", "Leader", "Term", "Committed", "Applied", "Apply lag", "Readiness"]:
                    assert fact in facts, (fact, facts)
                ui.screenshot("cluster")

            def create_api():
                ui.open_page("apis")
                form = "#api-form"
                ui.fill(form, "id", "petstore")
                ui.fill(form, "name", "Pet store")
                ui.fill(form, "path", "/pets/*")
                Select(ui.find(f'{form} [name="method"]')).select_by_value("GET")
                ui.find(f'{form} button[type="submit"]').click()
                row = ui.visible('#apis tbody tr[data-id="petstore"]')
                assert "GET /pets/* (key)" in row.text, row.text
                assert "prod" in row.text, row.text
                ui.screenshot("apis")

            def create_plan():
                ui.open_page("plans")
                form = "#plan-form"
                ui.fill(form, "id", "gold")
                ui.fill(form, "name", "Gold")
                ui.fill(form, "rate", 100)
                ui.fill(form, "burst", 100)
                ui.fill(form, "quota", 1000)
                Select(ui.find(f'{form} [name="period"]')).select_by_value("day")
                ui.find(f'{form} input[name="stage"][value="petstore/prod"]').click()
                ui.find(f'{form} button[type="submit"]').click()
                row = ui.visible('#plans tbody tr[data-id="gold"]')
                assert "1,000 a day" in row.text and "100/s, burst 100" in row.text and "petstore/prod" in row.text, row.text
                ui.screenshot("plans")

            def create_key():
                ui.open_page("keys")
                form = "#key-form"
                ui.fill(form, "name", "alice")
                ui.fill(form, "customer_id", "acme")
                ui.find(f'{form} input[name="plan"][value="gold"]').click()
                ui.find(f'{form} button[type="submit"]').click()
                secret = ui.visible("#secret-value").text
                assert secret.startswith("tgk_") and len(secret) > 30, "a key secret"
                row = ui.until("alice's row", lambda: ui.key_row("alice"))
                state["secret"], state["key_id"] = secret, row.get_attribute("data-id")
                prefix = row.find_element(By.CSS_SELECTOR, "code").text.rstrip("…")
                assert secret.startswith(prefix) and len(prefix) < len(secret), "the list shows the prefix only"
                assert secret not in row.text
                # Once on the page, nowhere else: not stored, not in the address.
                stored = ui.stored()
                assert not any(secret in v for v in stored["local"] + stored["session"]), "the secret was stored"
                assert secret not in driver.current_url
                assert driver.page_source.count(secret) == 1, "the secret is on the page once, in its panel"

            def secret_gone():
                ui.find("#secret-dismiss").click()
                ui.gone("#secret-panel")
                assert state["secret"] not in driver.page_source, "the secret stayed on the page"
                driver.refresh()
                ui.until("the keys page again", lambda: ui.key_row("alice"))
                assert not ui.all("#secret-panel")
                assert state["secret"] not in driver.page_source, "the secret came back after a reload"
                stored = ui.stored()
                assert not any(state["secret"] in v for v in stored["local"] + stored["session"])
                ui.screenshot("keys")

            def usage_moves():
                for _ in range(5):
                    decision = ui.check(state["secret"])
                    assert decision["reason"] == "allowed", decision
                ui.key_row("alice").find_element(By.LINK_TEXT, "Usage").click()
                ui.until("the usage page", lambda: ui.find("#page-title").text == "Usage")
                # Nodes report what they admitted in batches: the page asks every few seconds.
                ui.until("the chart to count 5", lambda: ui.text("#usage-total") == "5", timeout=60)
                today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
                assert ui.text(f'#usage-days tr[data-date="{today}"] td') == "5"
                chart = ui.find("#usage-chart")
                assert chart.get_attribute("data-total") == "5"
                description = ui.js("return arguments[0].querySelector('svg desc').textContent", chart)
                assert "5 in all" in description and state["key_id"] in description, description
                bar = ui.find(f'#usage-chart rect[data-label="{today}"]')
                assert bar.get_attribute("data-value") == "5"
                ui.until("995 remaining", lambda: ui.find("#usage-remaining").text == "995", timeout=30)
                ui.screenshot("usage")
                ui.full_screenshot("usage-full")
                # The whole plan: every key's days summed, and this period per key.
                Select(ui.find('#usage-form [name="key"]')).select_by_value("")
                ui.find('#usage-form button[type="submit"]').click()
                ui.until("the plan's table", lambda: ui.find(f'#usage-keys tr[data-key="{state["key_id"]}"]'))
                cells = ui.find(f'#usage-keys tr[data-key="{state["key_id"]}"]').find_elements(By.CSS_SELECTOR, "td")
                assert cells[0].text == "5", [c.text for c in cells]
                assert ui.text("#usage-total") == "5"

            def live_decisions():
                ui.open_page("decisions")
                ui.visible("#decisions-summary")
                ui.until("a first sample", lambda: "node 1" in ui.find("#decisions-summary").text.lower())
                time.sleep(2.5)  # a sample after the page opened, before the checks
                for _ in range(3):
                    assert ui.check(state["secret"])["reason"] == "allowed"
                for _ in range(2):
                    assert ui.check("tgk_console-test-no-such-key")["reason"] == "unknown_key"

                def window(reason):
                    cells = ui.all(f'#decisions tr[data-reason="{reason}"] td.window')
                    return cells[0].text if cells else None

                ui.until("3 allowed and 2 unknown_key in the window",
                         lambda: window("allowed") == "3" and window("unknown_key") == "2")
                description = ui.js("return document.querySelector('#decisions-chart svg desc').textContent")
                assert "allowed 3" in description and "unknown_key 2" in description, description
                assert ui.all('#decisions-chart polyline[data-reason="allowed"]'), "no line for allowed"
                ui.screenshot("decisions")

            def disable_enable():
                ui.open_page("keys")
                row = ui.until("alice", lambda: ui.key_row("alice"))
                row.find_element(By.CSS_SELECTOR, 'button[data-action="disable"]').click()
                ui.until("alice disabled", lambda: ui.key_status("alice") == "disabled")
                ui.decided(state["secret"], "disabled_key")
                ui.key_row("alice").find_element(By.CSS_SELECTOR, 'button[data-action="enable"]').click()
                ui.until("alice enabled", lambda: ui.key_status("alice") == "enabled")
                ui.decided(state["secret"], "allowed")

            def reroll():
                old = state["secret"]
                ui.key_row("alice").find_element(By.CSS_SELECTOR, 'button[data-action="reroll"]').click()
                ui.confirm(accept=True)
                new = ui.visible("#secret-value").text
                assert new.startswith("tgk_") and new != old
                stored = ui.stored()
                assert not any(new in v for v in stored["local"] + stored["session"])
                ui.find("#secret-dismiss").click()
                ui.gone("#secret-panel")
                assert new not in driver.page_source
                ui.decided(new, "allowed")
                ui.decided(old, "unknown_key")
                state["secret"] = new

            def search_and_pages():
                for i in range(6):
                    status, key = cluster.admin("POST", "/v1/admin/keys", {"name": f"paged-{i}", "customer_id": "paging"})
                    assert status == 201, key
                form = "#key-search"
                ui.fill(form, "search", "paging")
                Select(ui.find(f'{form} [name="limit"]')).select_by_value("5")
                ui.find(f'{form} button[type="submit"]').click()
                ui.until("a page of 5", lambda: len(ui.all("#keys tbody tr")) == 5
                         and not ui.key_row("alice"))
                pages = ui.find('[aria-label="Pages of keys"]')
                pages.find_element(By.XPATH, ".//button[text()='Next page']").click()
                ui.until("the last one", lambda: len(ui.all("#keys tbody tr")) == 1)
                ui.find('[aria-label="Pages of keys"]').find_element(By.XPATH, ".//button[text()='Previous page']").click()
                ui.until("the first page again", lambda: len(ui.all("#keys tbody tr")) == 5)
                ui.fill(form, "search", "ALI")
                ui.find(f'{form} button[type="submit"]').click()
                ui.until("alice alone", lambda: len(ui.all("#keys tbody tr")) == 1 and ui.key_row("alice"))

            def delete_with_confirmation():
                ui.key_row("alice").find_element(By.CSS_SELECTOR, 'button[data-action="delete"]').click()
                text = ui.confirm(accept=False)
                assert "alice" in text, text
                time.sleep(0.5)
                assert ui.key_row("alice"), "cancelled, yet gone"
                assert cluster.admin("GET", f"/v1/admin/keys/{state['key_id']}")[0] == 200
                ui.key_row("alice").find_element(By.CSS_SELECTOR, 'button[data-action="delete"]').click()
                ui.confirm(accept=True)
                ui.until("alice gone", lambda: not ui.key_row("alice") and ui.find("#keys-count"))
                assert cluster.admin("GET", f"/v1/admin/keys/{state['key_id']}")[0] == 404
                ui.decided(state["secret"], "unknown_key")

            def phone_width():
                driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                       {"width": 375, "height": 812, "deviceScaleFactor": 1, "mobile": False})
                try:
                    assert ui.js("return window.innerWidth") == 375
                    for page in PAGES:
                        ui.js("location.hash = arguments[0]", f"#/{page}")
                        ui.visible(f"#page-{page}")
                        time.sleep(1)  # the page's data drawn
                        if page == "usage":
                            Select(ui.find('#usage-form [name="plan"]')).select_by_value("gold")
                            ui.find('#usage-form button[type="submit"]').click()
                            ui.visible("#usage-chart")
                        width = ui.js("return [document.documentElement.scrollWidth, window.innerWidth]")
                        assert width[0] <= width[1], f"{page}: the page is {width[0]} px wide on a {width[1]} px screen"
                        ui.screenshot(f"phone-{page}")
                finally:
                    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

            def read_token_then_revoked():
                status, reader = cluster.admin("POST", "/v1/admin/tokens", {"name": "console-reader", "scopes": ["read"]})
                assert status == 201, reader
                ui.find("#sign-out").click()
                ui.sign_in(reader["secret"])
                ui.until("signed in", lambda: ui.find("#page-title").text in ("Cluster", "Keys", "Usage", "Live decisions", "APIs", "Plans"))
                ui.open_page("apis")
                ui.fill("#api-form", "name", "not allowed")
                ui.find('#api-form button[type="submit"]').click()
                message = ui.visible("#page-apis .message.error").text
                assert "Not allowed with this token (403)" in message, message
                # The token is deleted while the console holds it: the next call is a 401.
                assert cluster.admin("DELETE", f"/v1/admin/tokens/{reader['id']}")[0] == 204
                time.sleep(1)
                ui.find('#nav a[href="#/plans"]').click()
                message = ui.visible("#sign-in-message").text
                assert "refused (401)" in message and "Sign in again" in message, message
                assert ui.stored()["session"] == [], "the refused token was kept"

            def sign_out():
                ui.sign_in(cluster.admin_token)
                ui.until("signed in", lambda: ui.find("#page-title").text == "Plans")
                ui.find("#sign-out").click()
                message = ui.visible("#sign-in-message").text
                assert "Signed out" in message, message
                assert ui.stored() == {"local": [], "session": []}
                assert not ui.find("#nav").is_displayed()

            def browser_console_is_clean():
                # Answers other than 2xx are logged by the browser as failed
                # loads (the 401s and 403s above, a 503 during an election);
                # the console handles those. Anything else is a script error
                # or a Content-Security-Policy violation.
                problems = [e["message"] for e in driver.get_log("browser")
                            if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]
                assert not problems, problems

            case("tollgate dev prints each node's console URL", dev_prints_the_console)
            case("the console asks for a token before anything else", sign_in_page)
            case("a wrong token is refused with a clear message and not kept", wrong_token)
            case("signing in keeps the token in session storage only", sign_in)
            case("the cluster page shows three members, the leader and this node's indexes", cluster_page)
            case("an API is created from its page", create_api)
            case("a plan with a throttle and a quota is created on the API's stage", create_plan)
            case("a key is created and its secret is shown once, in its panel only", create_key)
            case("a dismissed secret is gone, also after a reload", secret_gone)
            case("checks move the usage chart and the period's remaining quota", usage_moves)
            case("live decisions chart this node's checks by reason", live_decisions)
            case("a key is disabled and enabled again, and checks follow", disable_enable)
            case("a reroll shows the new secret once; the old one stops working", reroll)
            case("keys are searched and paged", search_and_pages)
            case("a delete asks first; cancel keeps the key, confirm deletes it", delete_with_confirmation)
            case("every page fits a 375 px phone without scrolling sideways", phone_width)
            case("a read token may look but not change; a revoked one returns to sign-in", read_token_then_revoked)
            case("signing out forgets the token", sign_out)
            case("the browser logged no script error or policy violation", browser_console_is_clean)
            print(f"screenshots: {os.path.abspath(shots)}", flush=True)
        except Exception as e:  # noqa: BLE001 - reported as a failure, then counted
            cases.fail("the cluster and browser start", e)
        finally:
            if driver is not None:
                driver.quit()
            cluster.stop()
    return cases.close()


if __name__ == "__main__":
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/debug/tollgate"
    shots = sys.argv[2] if len(sys.argv) > 2 else os.path.join("target", "console-screenshots")
    sys.exit(main(binary, shots))
