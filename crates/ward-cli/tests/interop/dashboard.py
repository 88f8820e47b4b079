"""The ward dashboard in a real browser: Debian's Chromium, headless, driven
by Selenium through chromedriver.

Usage:
  dashboard.py mesh   URL TOKEN BUNDLE EXPECT_JSON [SCREENSHOT_DIR]
  dashboard.py expiry URL TOKEN BUNDLE

The server's certificate is checked against the ward bundle here; Chromium
is then told to trust exactly that certificate's public key
(--ignore-certificate-errors-spki-list), nothing else.
"""
import base64
import hashlib
import json
import os
import socket
import ssl
import sys
import tempfile
import time
import urllib.parse

import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

XSS = "<img src=x onerror=alert(2)>"
API = ["overview", "traffic", "policies", "policies/default/x", "audit", "clients"]


def spki_pin(url, bundle):
    u = urllib.parse.urlparse(url)
    ctx = ssl.create_default_context(cafile=bundle)
    with socket.create_connection((u.hostname, u.port)) as raw:
        with ctx.wrap_socket(raw, server_hostname=u.hostname) as tls:
            der = tls.getpeercert(binary_form=True)
    spki = x509.load_der_x509_certificate(der).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def browser(url, bundle):
    opts = webdriver.ChromeOptions()
    opts.binary_location = os.environ.get("WARD_TEST_CHROMIUM", "/usr/bin/chromium")
    for a in [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={tempfile.mkdtemp(prefix='ward-chromium-')}",
        f"--ignore-certificate-errors-spki-list={spki_pin(url, bundle)}",
    ]:
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(os.environ.get("WARD_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(service=service, options=opts)


def console_errors(d):
    return [e for e in d.get_log("browser") if e["level"] == "SEVERE"]


def no_console_errors(d, where):
    errs = console_errors(d)
    assert not errs, f"console errors on {where}: {errs}"


def wait(d, cond, secs=30, what=""):
    try:
        return WebDriverWait(d, secs, poll_frequency=0.2).until(cond)
    except Exception as e:
        raise AssertionError(f"timed out waiting for {what}: {d.find_element(By.TAG_NAME, 'body').text[:2000]}") from e


def text_in(d, selector, needle):
    def check(_):
        return d.execute_script(
            "return [...document.querySelectorAll(arguments[0])].some(e => e.innerText.includes(arguments[1]))",
            selector, needle)
    return check


def rows(d):
    """The data table's rows as cell texts, read at once (the page redraws
    itself every 2 s, so elements found one by one can go stale)."""
    return d.execute_script(
        "return [...document.querySelectorAll('#data > table > tbody > tr')]"
        ".map(tr => [...tr.children].map(td => td.innerText))"
    )


def click_row(d, needle):
    for _ in range(20):
        try:
            for tr in d.find_elements(By.CSS_SELECTOR, "#data > table > tbody > tr"):
                if needle in tr.text:
                    tr.click()
                    return
        except StaleElementReferenceException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"no row with {needle}")


def sign_in(d, token):
    box = wait(d, EC.visibility_of_element_located((By.ID, "token")), what="the sign-in form")
    box.clear()
    box.send_keys(token)
    d.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()


def no_alert_and_no_injected_img(d, where):
    try:
        a = d.switch_to.alert
        raise AssertionError(f"an alert opened on {where}: {a.text}")
    except NoAlertPresentException:
        pass
    imgs = d.find_elements(By.CSS_SELECTOR, "img")
    assert not imgs, f"{where}: an <img> element was injected"


def shot(d, out, name):
    if out:
        d.save_screenshot(os.path.join(out, f"dashboard-{name}.png"))


def mesh(url, token, bundle, expect, out):
    base = url.rstrip("/").removesuffix("/ui")
    # The data endpoints answer 401 before sign-in.
    for p in API:
        r = requests.get(f"{base}/ui/api/{p}", verify=bundle)
        assert r.status_code == 401, f"/ui/api/{p}: {r.status_code} before sign-in"
    r = requests.post(f"{base}/ui/api/check", json={"to": "payments"}, verify=bundle)
    assert r.status_code == 401, r.status_code

    d = browser(url, bundle)
    try:
        d.get(url)
        wait(d, EC.visibility_of_element_located((By.ID, "sign-in-form")), what="sign-in")
        assert not d.find_element(By.ID, "nav").is_displayed()
        body = d.find_element(By.TAG_NAME, "body").text
        for name in expect["services"]:
            assert name not in body, f"{name} visible before sign-in"
        assert "payments" not in d.page_source
        no_console_errors(d, "the sign-in page")
        shot(d, out, "sign-in")

        # A wrong token: an error, still signed out.
        sign_in(d, "wat_not-the-token")
        wait(d, text_in(d, "#sign-in-error", "wrong admin token"), what="the wrong-token error")
        assert not d.find_element(By.ID, "nav").is_displayed()
        d.get_log("browser")  # the refused sign-in's 401 is expected there

        sign_in(d, token)
        wait(d, EC.visibility_of_element_located((By.ID, "nav")), what="the signed-in page")
        cookie = d.get_cookie("ward_session")
        assert cookie and cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict", cookie

        # Overview: services and their sidecars, with version.
        for name in expect["services"]:
            wait(d, text_in(d, "#data table", name), what=f"service {name} on the overview")
        wait(d, text_in(d, "#data table", "sidecar"), what="a connected sidecar")
        wait(d, text_in(d, "#data table", "v" + expect["version"]), what="the sidecar's version")
        wait(d, text_in(d, "#data", "Next signing-CA rotation"), what="the CA")
        no_console_errors(d, "the overview")
        no_alert_and_no_injected_img(d, "the overview")
        shot(d, out, "overview")

        # Traffic: allowed and denied, the denial attributed to its policy.
        d.get(url + "#/traffic")
        wait(d, text_in(d, "#data table", expect["deny_policy"]), secs=60, what="a denial by " + expect["deny_policy"])
        cells = next(r for r in rows(d) if expect["deny_policy"] in r[5])
        assert cells[0] == "default/frontend" and cells[1] == "default/payments", cells
        assert int(cells[3]) > 0 and int(cells[4]) > 0, cells
        assert d.find_elements(By.CSS_SELECTOR, "#graph canvas"), "no graph drawn"
        time.sleep(2.5)  # a poll redraws it: still no errors
        no_console_errors(d, "the traffic page")
        shot(d, out, "traffic")

        # Policies: the list, one policy's YAML, and a what-if check.
        d.get(url + "#/policies")
        wait(d, text_in(d, "#data table", expect["deny_policy"]), what="the policy list")
        click_row(d, expect["deny_policy"])
        wait(d, text_in(d, "#policy-yaml pre", "kind: AuthorizationPolicy"), what="the policy's YAML")
        d.find_element(By.ID, "wi-from").send_keys("ns/default/sa/frontend")
        d.find_element(By.ID, "wi-to").send_keys("default/payments")
        d.find_element(By.ID, "wi-method").send_keys("GET")
        d.find_element(By.ID, "wi-path").send_keys(expect["denied_path"])
        d.find_element(By.CSS_SELECTOR, "#whatif button").click()
        wait(d, text_in(d, "#whatif-result", "DENY"), what="the what-if decision")
        assert expect["deny_policy"] in d.find_element(By.ID, "whatif-policy").text
        no_console_errors(d, "the policies page")
        shot(d, out, "policies")
        # A name that is markup comes back in an error, as text.
        to = d.find_element(By.ID, "wi-to")
        to.clear()
        to.send_keys(XSS)
        d.find_element(By.CSS_SELECTOR, "#whatif button").click()
        wait(d, text_in(d, "#whatif-result", XSS), what="the refused what-if, as text")
        no_alert_and_no_injected_img(d, "the what-if result")
        d.get_log("browser")  # the refused check's 404 is expected there

        # OAuth clients: the markup scope is shown as text, no secret.
        d.get(url + "#/clients")
        wait(d, text_in(d, "#data table", XSS), what="the scope, as text")
        assert "wcs_" not in d.page_source, "a client secret on the page"
        no_alert_and_no_injected_img(d, "the clients page")
        no_console_errors(d, "the clients page")

        # Audit log: paged, filterable.
        d.get(url + "#/audit")
        wait(d, text_in(d, "#data table", "service.add"), what="audit entries")
        f = d.find_element(By.CSS_SELECTOR, "#page input[type=search]")
        f.send_keys("client.create")
        wait(d, lambda _: (r := rows(d)) and all(x[3] == "client.create" for x in r), what="the filtered audit log")
        no_console_errors(d, "the audit log")
        shot(d, out, "audit")

        # Sign out: back to the form, the data gone, the API closed.
        d.find_element(By.ID, "sign-out").click()
        wait(d, EC.visibility_of_element_located((By.ID, "sign-in-form")), what="the sign-in form again")
        assert "payments" not in d.find_element(By.ID, "page").get_attribute("innerHTML")
        assert d.get_cookie("ward_session") is None or not d.get_cookie("ward_session")["value"]
        no_console_errors(d, "signing out")
    finally:
        d.quit()


def expiry(url, token, bundle):
    d = browser(url, bundle)
    try:
        d.get(url)
        sign_in(d, token)
        wait(d, text_in(d, "#data", "Services"), what="the overview")
        # The session lasts seconds here: the page returns to sign-in by
        # itself, at its next poll after the end.
        wait(d, EC.visibility_of_element_located((By.ID, "sign-in-form")), secs=30, what="sign-in after the session ended")
        assert "session has ended" in d.find_element(By.ID, "sign-in-error").text
        assert not d.find_element(By.ID, "nav").is_displayed()
        assert d.find_element(By.ID, "page").text == ""
    finally:
        d.quit()


def main():
    mode, url, token, bundle = sys.argv[1:5]
    if mode == "mesh":
        expect = json.loads(sys.argv[5])
        out = sys.argv[6] if len(sys.argv) > 6 else None
        mesh(url, token, bundle, expect, out)
    elif mode == "expiry":
        expiry(url, token, bundle)
    else:
        raise SystemExit(f"unknown mode {mode}")
    print("ok")


if __name__ == "__main__":
    main()
