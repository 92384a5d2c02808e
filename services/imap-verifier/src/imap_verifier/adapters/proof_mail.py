"""The proof mail sender: one message to the address through the operator's relay (aiosmtplib),
never through the SMTP server the person typed."""

import asyncio
import email.utils
from email.message import EmailMessage

import aiosmtplib

from imap_verifier.domain.ownership import MailNotSent, MailRefused, ProofMessage


class RelayProofSender:
    """Sends proof messages to the relay at host:port, within `timeout` seconds."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self._host = host
        self._port = port
        self._timeout = timeout

    async def send(self, message: ProofMessage) -> None:
        """Returns once the relay accepted the message; raises MailRefused or MailNotSent."""
        mail = EmailMessage()
        mail["From"] = message.sender
        mail["To"] = message.recipient
        mail["Subject"] = message.subject
        mail["Date"] = email.utils.formatdate(localtime=False)
        mail["Message-ID"] = email.utils.make_msgid(domain=message.sender.rpartition("@")[2])
        # An automatic message: no out-of-office or other auto-replies (RFC 3834).
        mail["Auto-Submitted"] = "auto-generated"
        mail.set_content(message.body)
        # EHLO names the sender's domain: the default getfqdn() may stall on DNS.
        smtp = aiosmtplib.SMTP(
            hostname=self._host,
            port=self._port,
            timeout=self._timeout,
            start_tls=False,
            local_hostname=message.sender.rpartition("@")[2] or "localhost",
        )
        try:
            async with asyncio.timeout(self._timeout):
                await smtp.connect()
                await smtp.send_message(mail)
        except aiosmtplib.SMTPRecipientsRefused as refused:
            codes = [r.code for r in refused.recipients]
            text = "; ".join(f"{r.code} {r.message}"[:200] for r in refused.recipients)
            if codes and all(code >= 500 for code in codes):
                raise MailRefused(text) from None
            raise MailNotSent(text) from None
        except aiosmtplib.SMTPDataError as exc:
            if exc.code >= 500:
                raise MailRefused(f"{exc.code} {exc.message}"[:200]) from None
            raise MailNotSent(f"{exc.code} {exc.message}"[:200]) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise MailNotSent(type(exc).__name__) from None
        finally:
            smtp.close()
