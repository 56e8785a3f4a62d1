Subject: a

first
.MAIL FROM:<evil@x>
RCPT TO:<v@y>
DATA
Subject: b

.
